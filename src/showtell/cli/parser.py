"""The command line's arguments: one sub-parser per command, and the one place numbers are checked.

Numbers are checked by argparse types (`count`, `positive`, `port`) as they
are parsed, so a bad one ends in one line naming the flag before anything runs. Decoding options
(beam size, n-best, sampling) are checked again by the library's rule (decoding/options.py)
once the run's defaults are known, as for the Python API and the service.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


class Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors, in our one-line style
        if message.startswith("argument "):
            message = message[len("argument "):]
        self.exit(2, f"showtell: error: {message} (see {self.prog} --help)\n")


def _whole(text: str) -> int:
    try:
        return int(text, 10)   # exact: never through float, so 12345678901234567891 stays itself
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def count(minimum: int = 1, maximum: int | None = None):
    """A whole number of at least `minimum` (and at most `maximum`)."""
    def parse(text: str) -> int:
        value = _whole(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {minimum} or more, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected {maximum} or less, got {value}")
        return value
    parse.__name__ = "count"
    return parse


def positive(text: str) -> float:
    """A finite number above 0 (nan and inf are refused: they would overflow or never end)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


port = count(1, 65535)


def config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file, or a built-in preset name (synth)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting, e.g. --set model.hidden_dim=512 (repeatable)")


def threads(text: str) -> str:
    """'auto' or a number of threads."""
    from ..device import check_threads_setting
    from ..errors import ArgumentError

    try:
        return check_threads_setting(text, "")
    except ArgumentError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def threads_arg(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--threads", type=threads, default=default, metavar="N|auto",
                   help="CPU threads for PyTorch: 'auto' (default) uses the cores other processes leave free, "
                        "following their load; or a count")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="showtell", description="Train, evaluate and serve Show and Tell image captioners.")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on standard error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_synth, _train, _caption, _evaluate, _prepare, _export, _serve, _demo, _score, _config):
        add(sub)
    return parser


def _synth(sub) -> None:
    p = sub.add_parser("synth", help="draw the built-in synthetic dataset (shapes with five captions each)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--images", type=count(10), default=3000, help="number of pictures (default 3000; at least 10 "
                                                                   "for train/val/test splits)")
    p.add_argument("--seed", type=count(0), default=0)
    p.add_argument("--size", type=count(32, 1024), default=128, help="picture side in pixels (32 to 1024, default 128)")


def _train(sub) -> None:
    p = sub.add_parser("train", help="train a captioner")
    p.add_argument("--data", action="append", default=[], metavar="[SPLIT=]FILE",
                   help="annotations: COCO captions JSON, Karpathy split JSON, CSV or JSONL (repeatable)")
    p.add_argument("--images", metavar="DIR", help="image folder (default: the annotation file's folder)")
    p.add_argument("--features", metavar="DATA_DIR", help="train from features cached by `showtell prepare`")
    p.add_argument("--out", metavar="RUN_DIR", type=Path, help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", type=Path, help="continue a run from its last checkpoint")
    p.add_argument("--max-minutes", type=positive, help="stop cleanly after this many minutes, keeping the best checkpoint")
    config_args(p)
    threads_arg(p, default=None)


def _caption(sub) -> None:
    p = sub.add_parser("caption", help="caption pictures with a trained model")
    p.add_argument("run", help="run directory or exported model")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN", help="another run to average with (repeatable)")
    p.add_argument("--beam-size", type=int, help="beam width (default: the run's decode.beam_size; 1 = greedy)")
    p.add_argument("--n-best", type=int, default=1, help="alternatives per picture (with --json/--csv)")
    p.add_argument("--sample", action="store_true", help="draw captions at random instead of searching (--n-best of them)")
    p.add_argument("--temperature", type=float, help="sampling temperature (default: decode.temperature)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely words")
    p.add_argument("--top-p", type=float, help="sample among the words holding this much probability")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample")
    p.add_argument("--batch-size", type=count(1), default=32)
    p.add_argument("--attention", metavar="OUT_DIR", type=Path, help="write attention maps (attention models)")
    p.add_argument("--device", default="cpu")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header")
    p.add_argument("--coco-results", metavar="FILE.json", type=Path,
                   help="also write a COCO results file (ids from COCO file names, e.g. for test2014)")
    threads_arg(p)


def _evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a trained model on a dataset split and write report.html")
    p.add_argument("run")
    p.add_argument("--data", action="append", default=[], metavar="[SPLIT=]FILE")
    p.add_argument("--images", metavar="DIR")
    p.add_argument("--features", metavar="DATA_DIR", help="use features cached by `showtell prepare`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--beam-size", type=count(1))
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN")
    p.add_argument("--max-images", type=count(1), help="evaluate only the first N pictures of the split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object of scores")
    p.add_argument("--objects", metavar="INSTANCES_JSON",
                   help="COCO instances_*.json: report CHAIR object hallucination (automatic on the built-in scenes)")
    p.add_argument("--check-metrics", action="store_true",
                   help="recompute the scores with pycocoevalcap's own tokenizer and scorers and print both (needs Java)")
    p.add_argument("--results", metavar="FILE.json", type=Path,
                   help="write the captions as a COCO results file ([{image_id, caption}], the dataset's own ids)")
    threads_arg(p)


def _prepare(sub) -> None:
    p = sub.add_parser("prepare", help="cache encoder features and vocabulary for a frozen encoder")
    p.add_argument("--data", action="append", default=[], metavar="[SPLIT=]FILE", required=True)
    p.add_argument("--images", metavar="DIR")
    p.add_argument("--out", metavar="DATA_DIR", type=Path, required=True)
    p.add_argument("--batch-size", type=count(1), default=32)
    config_args(p)
    threads_arg(p, default=None)


def _export(sub) -> None:
    p = sub.add_parser("export", help="copy a run's model package (config, vocabulary, weights) into a new folder")
    p.add_argument("run")
    p.add_argument("out", type=Path)
    p.add_argument("--onnx", action="store_true", help="also write the encoder and one decoder step as ONNX "
                                                       "graphs, to caption and serve with onnxruntime and no PyTorch")
    p.add_argument("--web", action="store_true", help="write a static web page that captions in the browser "
                                                      "(the ONNX graphs run by onnxruntime-web; no server needed)")
    p.add_argument("--onnxruntime-web", metavar="DIR", dest="onnxruntime_web",
                   help="with --web: copy onnxruntime-web's files from DIR (its dist folder) so the page works "
                        "offline (default: node_modules/onnxruntime-web when present, else the pinned CDN copy)")


def _serve(sub) -> None:
    p = sub.add_parser("serve", help="HTTP service and web page for a trained model")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-upload-mb", type=positive, default=10, help="largest picture accepted (default 10 MB)")
    p.add_argument("--max-images", type=count(1), default=16, help="pictures per request (default 16)")
    p.add_argument("--max-pixels", type=count(1), default=40_000_000, help="largest picture in pixels (default 40 M)")
    p.add_argument("--max-decoded-pixels", type=count(1), help="pixels decoded at once, all requests together "
                                                               "(default: --max-pixels, at least that)")
    p.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME[,NAME...]",
                   help="Host header values to accept besides the loopback names and --host (needed with "
                        "--host 0.0.0.0; '*' accepts any)")
    p.add_argument("--max-batch", type=count(1), default=32, help="pictures captioned together at most (default 32)")
    p.add_argument("--max-wait-ms", type=positive, default=5, help="how long a request waits for company (default 5 ms)")
    p.add_argument("--body-timeout", type=positive, default=30, help="seconds a client has to send its upload (default 30)")
    p.add_argument("--header-timeout", type=positive, default=10,
                   help="seconds a connection has to send its request headers (default 10)")
    threads_arg(p)


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="synthesise data, train, evaluate and show captions (a few minutes)")
    p.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for the data and the run (default demo-run)")
    p.add_argument("--epochs", type=count(1), help="train exactly this many epochs (default: the demo's fixed number, the "
                                                   "same model however fast or busy the machine is)")
    p.add_argument("--minutes", type=positive, help="train for this many minutes instead, --epochs at most (fewer "
                                                   "steps, and weaker captions, on a slower machine)")
    p.add_argument("--images", type=count(10), default=3000, help="synthetic pictures (default 3000)")
    threads_arg(p)


def _score(sub) -> None:
    p = sub.add_parser("score", help="how probable a trained model finds given captions of a picture")
    p.add_argument("run", help="run directory or exported model")
    p.add_argument("picture", help="image file")
    p.add_argument("captions", nargs="+", metavar="CAPTION", help="captions to score (quote each)")
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN", help="another run to average with (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per caption")
    threads_arg(p)


def _config(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config, or every setting with --list")
    p.add_argument("--list", action="store_true")
    config_args(p)
