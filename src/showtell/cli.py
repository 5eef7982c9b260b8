"""The `showtell` command: parse arguments, call the library, print. Nothing else lives here.

A user's mistake ends in one line on standard error naming the problem and a non-zero exit
status (2 for bad input, 1 for images that could not be captioned), never a traceback.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import logging
import os
import sys
from pathlib import Path

from .errors import ShowtellError, Stopped
from .progress import progress_bar

log = logging.getLogger("showtell")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "showtell: warning: " if record.levelno >= logging.WARNING else "showtell: "
        return prefix + record.getMessage()


def setup_logging(quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's usage errors, in our one-line style
        self.exit(2, f"showtell: error: {message} (see {self.prog} --help)\n")


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file, or a built-in preset name (synth)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override one setting, e.g. --set model.hidden_dim=512 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="showtell", description="Train, evaluate and serve Show and Tell image captioners.")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors on standard error")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("synth", help="draw the built-in synthetic dataset (shapes with five captions each)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--images", type=int, default=3000, help="number of pictures (default 3000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128, help="picture side in pixels (default 128)")

    p = sub.add_parser("train", help="train a captioner")
    p.add_argument("--data", action="append", default=[], metavar="[SPLIT=]FILE",
                   help="annotations: COCO captions JSON, Karpathy split JSON, CSV or JSONL (repeatable)")
    p.add_argument("--images", metavar="DIR", help="image folder (default: the annotation file's folder)")
    p.add_argument("--features", metavar="DATA_DIR", help="train from features cached by `showtell prepare`")
    p.add_argument("--out", metavar="RUN_DIR", type=Path, help="run directory to create")
    p.add_argument("--resume", metavar="RUN_DIR", type=Path, help="continue a run from its last checkpoint")
    p.add_argument("--max-minutes", type=float, help="stop cleanly after this many minutes, keeping the best checkpoint")
    _config_args(p)

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
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--attention", metavar="OUT_DIR", type=Path, help="write attention maps (attention models)")
    p.add_argument("--device", default="cpu")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header")
    p.add_argument("--coco-results", metavar="FILE.json", type=Path,
                   help="also write a COCO results file (ids from COCO file names, e.g. for test2014)")

    p = sub.add_parser("evaluate", help="score a trained model on a dataset split and write report.html")
    p.add_argument("run")
    p.add_argument("--data", action="append", default=[], metavar="[SPLIT=]FILE")
    p.add_argument("--images", metavar="DIR")
    p.add_argument("--features", metavar="DATA_DIR", help="use features cached by `showtell prepare`")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--beam-size", type=int)
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN")
    p.add_argument("--max-images", type=int, help="evaluate only the first N pictures of the split")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object of scores")
    p.add_argument("--objects", metavar="INSTANCES_JSON",
                   help="COCO instances_*.json: report CHAIR object hallucination (automatic on the built-in scenes)")
    p.add_argument("--check-metrics", action="store_true",
                   help="recompute the scores with pycocoevalcap's own tokenizer and scorers and print both (needs Java)")
    p.add_argument("--results", metavar="FILE.json", type=Path,
                   help="write the captions as a COCO results file ([{image_id, caption}], the dataset's own ids)")

    p = sub.add_parser("prepare", help="cache encoder features and vocabulary for a frozen encoder")
    p.add_argument("--data", action="append", default=[], metavar="[SPLIT=]FILE", required=True)
    p.add_argument("--images", metavar="DIR")
    p.add_argument("--out", metavar="DATA_DIR", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=32)
    _config_args(p)

    p = sub.add_parser("export", help="copy a run's model package (config, vocabulary, weights)")
    p.add_argument("run")
    p.add_argument("out", type=Path)
    p.add_argument("--onnx", action="store_true", help="also write the encoder and one decoder step as ONNX "
                                                       "graphs, to caption and serve with onnxruntime and no PyTorch")

    p = sub.add_parser("serve", help="HTTP service and web page for a trained model")
    p.add_argument("run")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-upload-mb", type=float, default=10, help="largest picture accepted (default 10 MB)")
    p.add_argument("--max-images", type=int, default=16, help="pictures per request (default 16)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest picture in pixels (default 40 M)")
    p.add_argument("--max-decoded-pixels", type=int, help="pixels decoded at once, all requests together "
                                                          "(default: --max-pixels, at least that)")
    p.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME[,NAME...]",
                   help="Host header values to accept besides the loopback names and --host (needed with "
                        "--host 0.0.0.0; '*' accepts any)")
    p.add_argument("--max-batch", type=int, default=32, help="pictures captioned together at most (default 32)")
    p.add_argument("--max-wait-ms", type=float, default=5, help="how long a request waits for company (default 5 ms)")
    p.add_argument("--body-timeout", type=float, default=30, help="seconds a client has to send its upload (default 30)")

    p = sub.add_parser("demo", help="synthesise data, train, evaluate and show captions (about 5 minutes)")
    p.add_argument("--out", type=Path, default=Path("demo-run"), help="folder for the data and the run (default demo-run)")
    p.add_argument("--minutes", type=float, default=3.5, help="training budget in minutes (default 3.5)")
    p.add_argument("--images", type=int, default=3000, help="synthetic pictures (default 3000)")
    p.add_argument("--epochs", type=int, help="train exactly this many epochs instead of for --minutes "
                                              "(the same model however busy the machine is)")

    _add_score_parser(sub)

    p = sub.add_parser("config", help="print the resolved config, or every setting with --list")
    p.add_argument("--list", action="store_true")
    _config_args(p)
    return parser


def _add_score_parser(sub) -> None:
    p = sub.add_parser("score", help="how probable a trained model finds given captions of a picture")
    p.add_argument("run", help="run directory or exported model")
    p.add_argument("picture", help="image file")
    p.add_argument("captions", nargs="+", metavar="CAPTION", help="captions to score (quote each)")
    p.add_argument("--ensemble", action="append", default=[], metavar="RUN", help="another run to average with (repeatable)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="one JSON object per caption")


# ---------------------------------------------------------------------------------------------


def expand_images(items: list[str]) -> list[str]:
    """Files as given; folders and glob patterns expanded to the pictures in them, sorted."""
    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif not path.exists() and any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            out += matches if matches else [item]
        else:
            out.append(item)
    return out


def cmd_synth(args) -> int:

    from .data.synthetic import write_dataset

    if args.images < 10:
        raise ShowtellError(f"--images: at least 10 pictures are needed for train/val/test splits, got {args.images}")
    if not 32 <= args.size <= 1024:
        raise ShowtellError(f"--size: expected 32 to 1024 pixels, got {args.size}")
    with progress_bar(total=args.images, desc="drawing", unit="img") as bar:
        path = write_dataset(args.out_dir, args.images, args.seed, args.size, bar.update)
    print(f"wrote {args.images} pictures and their captions to {path}")
    return 0


def _records(args, config):
    from .data.formats import load_dataset

    if not args.data:
        raise ShowtellError("--data: give an annotation file (COCO, Karpathy, CSV or JSONL)")
    return load_dataset(args.data, args.images, config.data)


def _absolute(spec: str) -> str:
    """A --data value with its file made absolute (kept in the run, for --resume from anywhere)."""
    split, _, name = spec.rpartition("=")
    if split not in ("train", "val", "test"):
        split, name = "", spec
    return (split + "=" if split else "") + str(Path(name).resolve())


def cmd_train(args) -> int:
    from . import distributed as dist
    from .config import load_config
    from .distributed import resolve_device
    from .train import resume, train

    if args.max_minutes is not None and not args.max_minutes > 0:
        raise ShowtellError(f"--max-minutes: expected a positive number of minutes, got {args.max_minutes:g}")
    if args.resume:
        from .run import Run

        if args.config or args.out:
            raise ShowtellError("--resume continues a run with its own config and folder; drop --config/--out "
                                "(--set may change epochs and self-critical settings)")
        run = Run(args.resume)
        config = run.config()
        sources = run.sources()
        args.data = args.data or sources.get("data", [])
        args.images = args.images or sources.get("images")
        args.features = args.features or sources.get("features")
    else:
        if not args.out:
            raise ShowtellError("--out: give a run directory to create (or --resume RUN_DIR)")
        config = load_config(args.config, args.set)
    with dist.process_group(resolve_device(config.train.device).type):
        features = None
        if args.features:
            from .data.features import FeatureCache

            features = FeatureCache.open(args.features)
            if not args.resume:
                config = features.adapt(config)
        records = features.records() if features else _records(args, config)
        if args.resume:
            summary = resume(args.resume, records, args.max_minutes, features=features, overrides=args.set)
            out = args.resume
        else:
            sources = {"data": [_absolute(spec) for spec in args.data],
                       "images": str(Path(args.images).resolve()) if args.images else None,
                       "features": str(Path(args.features).resolve()) if args.features else None}
            summary = train(config, records, args.out, sources, args.max_minutes, features=features)
            out = args.out
    if dist.is_main():
        print(f"trained {summary['steps']} steps ({summary['epochs']} epochs); best model in {out}/model.safetensors")
        print(f"next: showtell caption {out} IMAGE...   or   showtell evaluate {out} --data FILE")
    return 0


def _attention_targets(out_dir: Path, files: list[str]) -> dict[str, Path]:
    """One map per picture, named after it; pictures with the same name in different folders get
    -2, -3... so that no map overwrites another."""
    targets, taken = {}, set()
    for source in files:
        if source in targets:
            continue
        stem, n = Path(source).stem, 1
        name = f"{stem}.png"
        while name in taken:
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        targets[source] = out_dir / name
    return targets


def _write_attention(captioner, results, targets: dict[str, Path]) -> None:
    from .report import attention_figure

    for result in results:
        if result.error or not result.hypotheses:
            continue
        attention_figure(result.source, result.hypotheses[0], captioner.grid_side, targets[result.source])


def _quote(name: str) -> str:
    """A file name as the first field of a one-line, tab-separated output line: as a JSON string
    (quoted, with \\t, \\n... escapes) when it holds a control character or starts with a quote."""
    if name.startswith('"') or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return json.dumps(name, ensure_ascii=False)
    return name


def _check_caption_args(args) -> None:
    """Every argument of `caption` checked before any model is loaded or picture decoded."""
    for name in ("beam_size", "top_k"):
        value = getattr(args, name)
        low = 0 if name == "top_k" else 1
        if value is not None and value < low:
            raise ShowtellError(f"--{name.replace('_', '-')}: expected {low} or more, got {value}")
    if args.n_best < 1:
        raise ShowtellError(f"--n-best: expected 1 or more, got {args.n_best}")
    if args.batch_size < 1:
        raise ShowtellError(f"--batch-size: expected 1 or more, got {args.batch_size}")
    if args.temperature is not None and args.temperature <= 0:
        raise ShowtellError(f"--temperature: expected a positive number, got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ShowtellError(f"--top-p: expected a number in (0, 1], got {args.top_p}")
    if not args.sample:
        for name in ("temperature", "top_k", "top_p"):
            if getattr(args, name) is not None:
                raise ShowtellError(f"--{name.replace('_', '-')}: only used with --sample")
    if args.attention is not None and args.attention.exists() and not args.attention.is_dir():
        raise ShowtellError(f"--attention {args.attention}: exists and is not a folder")
    _check_device_for(args.run, args.device)


def _check_device_for(run: str, device: str) -> None:
    """--device checked for what will run: onnxruntime for an ONNX package, torch for a run."""
    from .runtime import check_onnx_device, is_onnx_package

    if is_onnx_package(run):
        check_onnx_device(device, "--device")
    else:
        from .api import check_device

        check_device(device, "--device")


def cmd_caption(args) -> int:

    from .api import Captioner

    _check_caption_args(args)
    captioner = Captioner.load([args.run] + args.ensemble, device=args.device)
    beam = args.beam_size or captioner.config.decode.beam_size
    if not args.sample and args.n_best > beam:
        raise ShowtellError(f"--n-best {args.n_best}: beam search keeps at most --beam-size alternatives "
                            f"(beam {beam}); raise --beam-size or use --sample")
    want_attention = args.attention is not None
    if want_attention and not captioner.has_attention:
        raise ShowtellError(f"--attention: {args.run} is not an attention model (model.decoder=attention)")
    sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed} \
        if args.sample else None
    files = expand_images(args.images)
    if not files:
        raise ShowtellError("no pictures found in " + " ".join(args.images))
    coco_ids = _coco_ids(args.coco_results, files) if args.coco_results else None
    coco_pairs = []
    targets = {}
    if want_attention:
        args.attention.mkdir(parents=True, exist_ok=True)
        targets = _attention_targets(args.attention, files)
    writer = csv.writer(sys.stdout) if args.csv else None
    if writer:
        writer.writerow(["image", "caption", "logprob", "rank", "error"])
    failed = 0
    with progress_bar(total=len(files), desc="captioning", unit="img", disable=len(files) < 2) as bar:
        for start in range(0, len(files), args.batch_size):
            chunk = files[start:start + args.batch_size]
            results = captioner.caption(chunk, beam_size=args.beam_size, n_best=args.n_best, batch_size=args.batch_size,
                                        return_attention=want_attention, sampling=sampling)
            for result in results:
                if result.error:
                    failed += 1
                    error = result.error
                    if error.startswith(result.source + ": "):
                        error = _quote(result.source) + error[len(result.source):]
                    print(f"showtell: error: {error}", file=sys.stderr)
                if args.json:
                    print(json.dumps({"image": result.source, "caption": result.caption, "logprob": result.logprob,
                                      "error": result.error,
                                      "hypotheses": [{"caption": h.caption, "logprob": h.logprob, "score": h.score,
                                                      "finished": h.finished}
                                                     for h in result.hypotheses]}), flush=True)
                elif writer:
                    if result.error:
                        writer.writerow([result.source, "", "", "", result.error])
                    for rank, h in enumerate(result.hypotheses[: args.n_best], start=1):
                        writer.writerow([result.source, h.caption, f"{h.logprob:.4f}", rank, ""])
                elif not result.error:
                    print(f"{_quote(result.source)}\t{result.caption}", flush=True)
                if coco_ids is not None and not result.error:
                    coco_pairs.append((coco_ids[result.source], result.caption))
            if want_attention:
                _write_attention(captioner, results, targets)
            bar.update(len(chunk))
    if want_attention:
        renamed = [(source, target) for source, target in targets.items() if target.stem != Path(source).stem]
        for source, target in renamed:
            log.info("attention map of %s is %s (another picture has the same name)", _quote(source), target)
    if coco_ids is not None:
        from .coco_results import write_results

        write_results(args.coco_results, coco_pairs)
        log.info("COCO results file of %d pictures: %s", len(coco_pairs), args.coco_results)
    if failed:
        print(f"showtell: {failed} of {len(files)} pictures could not be captioned", file=sys.stderr)
    return 1 if failed else 0


def _coco_ids(out: Path, files: list[str]) -> dict[str, int]:
    """Each picture's COCO id, parsed from its name, checked with the output file before captioning."""
    from .coco_results import check_output_file, ids_from_names

    check_output_file(out, "--coco-results")
    return ids_from_names(files)


def cmd_score(args) -> int:
    """Each caption's log-probability, perplexity and per-word log-probabilities, in the order given."""
    from .api import Captioner, check_device

    check_device(args.device, "--device")
    captioner = Captioner.load([args.run] + args.ensemble, device=args.device)
    for result in captioner.logprob(args.picture, args.captions):
        if args.json:
            print(json.dumps({"image": args.picture, **result.to_dict()}), flush=True)
            continue
        print(f"{result.logprob:9.4f}  perplexity {result.perplexity:8.3f}  {result.caption}")
        print("           " + "  ".join(f"{w} {lp:.3f}" for w, lp in zip(result.words, result.word_logprobs)))
    return 0


def cmd_evaluate(args) -> int:
    from .api import check_device
    from .evaluate_run import evaluate_run, format_table

    for name in ("beam_size", "max_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ShowtellError(f"--{name.replace('_', '-')}: expected 1 or more, got {value}")
    check_device(args.device, "--device")

    report = evaluate_run(args.run, args.data, args.images, args.split, args.beam_size, args.ensemble,
                          device=args.device, features_dir=args.features, max_images=args.max_images,
                          objects=args.objects, results_file=args.results)
    check = _check_metrics(report) if args.check_metrics else None
    if args.json:
        extra = {"pycocoevalcap": {m: theirs for m, (_, theirs) in check.items()}} if check else {}
        print(json.dumps({**report["scores"], **extra}, sort_keys=True))
    else:
        print(format_table(report))
        print(f"report: {report['report_path']}")
        if report["evaluation_path"]:
            print(f"scores and captions kept in {report['evaluation_path']}")
        if args.results:
            print(f"COCO results file: {args.results}")
        if check:
            from .check_metrics import format_check

            print("\nthe same captions scored by pycocoevalcap's own tokenizer and scorers:")
            print(format_check(check))
    return 0


def _check_metrics(report: dict) -> dict:
    from .check_metrics import check_report

    return check_report(report)


def cmd_prepare(args) -> int:
    from . import distributed as dist
    from .config import load_config
    from .distributed import resolve_device
    from .extract import prepare

    if args.batch_size < 1:
        raise ShowtellError(f"--batch-size: expected 1 or more, got {args.batch_size}")
    config = load_config(args.config, args.set)
    records = _records(args, config)
    with dist.process_group(resolve_device(config.train.device).type):  # under torchrun each rank encodes its share
        out = prepare(records, config, args.out, batch_size=args.batch_size, sources=args.data)
    if dist.is_main():
        print(f"features and vocabulary in {out}; train with: showtell train --features {out} --out RUN_DIR")
    return 0


def cmd_export(args) -> int:
    if args.onnx:
        from .api import _torch

        _torch("export --onnx")
        from .onnx_export import export_onnx

        out = export_onnx(args.run, args.out)
        print(f"exported the model package and encoder.onnx, init_state.onnx, step.onnx to {out}; "
              f"caption with: showtell caption {out} IMAGE...  (needs only onnxruntime, not PyTorch)")
        return 0
    from .run import Run

    out = Run(args.run).export(args.out)
    card = " and the model card README.md" if (out / "README.md").is_file() else ""
    print(f"exported config.json, vocab.json, model.safetensors{card} to {out}")
    return 0


def cmd_serve(args) -> int:
    from .serve.app import Limits, serve

    _check_device_for(args.run, args.device)
    if args.max_decoded_pixels is None:
        args.max_decoded_pixels = args.max_pixels
    for name in ("max_upload_mb", "max_images", "max_pixels", "max_decoded_pixels", "max_batch", "body_timeout"):
        if getattr(args, name) <= 0:
            raise ShowtellError(f"--{name.replace('_', '-')}: expected a positive number")
    if args.max_decoded_pixels < args.max_pixels:
        raise ShowtellError(f"--max-decoded-pixels: must be at least --max-pixels ({args.max_pixels:,}), so that "
                            f"the largest picture accepted can be decoded; got {args.max_decoded_pixels:,}")
    if not 0 < args.port < 65536:
        raise ShowtellError(f"--port: expected 1 to 65535, got {args.port}")
    file_bytes = int(args.max_upload_mb * (1 << 20))
    limits = Limits(max_file_bytes=file_bytes, max_request_bytes=file_bytes * args.max_images + (1 << 20),
                    max_images=args.max_images, max_pixels=args.max_pixels, max_decoded_pixels=args.max_decoded_pixels,
                    body_timeout_s=args.body_timeout)
    serve(args.run, args.host, args.port, args.device, limits, args.max_batch, args.max_wait_ms,
          allowed_hosts=args.allowed_hosts)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    if args.epochs is not None and args.epochs < 1:
        raise ShowtellError(f"--epochs: expected 1 or more, got {args.epochs}")
    if not args.minutes > 0:
        raise ShowtellError(f"--minutes: expected a positive number of minutes, got {args.minutes:g}")
    if args.images < 10:
        raise ShowtellError(f"--images: at least 10 pictures are needed for train/val/test splits, got {args.images}")
    run_demo(args.out, minutes=args.minutes, n_images=args.images, epochs=args.epochs)
    return 0


def cmd_config(args) -> int:
    from .config import describe, load_config

    print(describe() if args.list else load_config(args.config, args.set).to_json(), end="")
    return 0


COMMANDS = {"synth": cmd_synth, "train": cmd_train, "caption": cmd_caption, "evaluate": cmd_evaluate,
            "prepare": cmd_prepare, "export": cmd_export, "serve": cmd_serve, "demo": cmd_demo,
            "config": cmd_config,
            "score": cmd_score}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        return COMMANDS[args.command](args)
    except Stopped as stop:
        print(f"showtell: {stop}", file=sys.stderr)
        return stop.exit_code
    except ShowtellError as error:
        print(f"showtell: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("showtell: interrupted; the last checkpoint is kept (continue with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # disk full, permission denied: the system's words, one line
        where = f"{error.filename}: " if error.filename else ""
        print(f"showtell: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
