"""One function per command (caption and score are in caption.py): read the arguments, call the
library, print what it returns. Library modules are imported inside each function, so
`showtell --help` and the commands that need no PyTorch start fast."""

from __future__ import annotations

import json
from pathlib import Path

from ..decoding.options import CLI
from ..errors import ArgumentError, ShowtellError
from ..progress import progress_bar


def cmd_synth(args) -> int:
    from ..data.synthetic import write_dataset

    with progress_bar(total=args.images, desc="drawing", unit="img") as bar:
        path = write_dataset(args.out_dir, args.images, args.seed, args.size, bar.update)
    print(f"wrote {args.images} pictures and their captions to {path}")
    return 0


def _records(args, config):
    from ..data.formats import load_dataset

    if not args.data:
        raise ShowtellError("--data: give an annotation file (COCO, Karpathy, CSV or JSONL)")
    return load_dataset(args.data, args.images, config.data)


def _absolute(spec: str) -> str:
    """A --data value with its file made absolute (kept in the run, for --resume from anywhere)."""
    from ..data.formats import parse_data_spec

    split, name = parse_data_spec(spec)
    return (split + "=" if split else "") + str(Path(name).resolve())


def _training_inputs(args):
    """(config, the run's recorded sources or None) for a new run or a resume; --resume reuses the
    run's own data unless --data/--images/--features are given."""
    from ..config import load_config
    from ..run import Run

    if not args.resume:
        if not args.out:
            raise ShowtellError("--out: give a run directory to create (or --resume RUN_DIR)")
        return load_config(args.config, args.set)
    if args.config or args.out:
        raise ShowtellError("--resume continues a run with its own config and folder; drop --config/--out "
                            "(--set may change epochs and self-critical settings)")
    run = Run(args.resume)
    sources = run.sources()
    args.data = args.data or sources.get("data", [])
    args.images = args.images or sources.get("images")
    args.features = args.features or sources.get("features")
    return run.config()


def thread_setting(args) -> str:
    """The threads a command runs on, which `main` configures once for the process: --threads;
    for train and prepare without it, train.threads (a resumed run's own unless --set changes it)."""
    if args.threads is not None or args.command not in ("train", "prepare"):
        return args.threads or "auto"
    from ..config import load_config, parse_overrides

    if getattr(args, "resume", None) and "train.threads" not in parse_overrides(args.set):
        from ..run import Run

        return Run(args.resume).config().train.threads
    return load_config(None if getattr(args, "resume", None) else args.config, args.set).train.threads


def _threads_setting(args) -> None:
    """`--threads` on train and prepare is train.threads, overriding the config file's (and kept
    in the run's config.json)."""
    if args.threads is not None:
        args.set = [*args.set, f"train.threads={args.threads}"]


def cmd_train(args) -> int:
    from ..device import resolve_device
    from ..training import distributed as dist
    from ..training.entry import resume, train

    _threads_setting(args)
    config = _training_inputs(args)
    with dist.process_group(resolve_device(config.train.device).type):
        cache = None
        if args.features:
            from ..data.features import FeatureCache

            cache = FeatureCache.open(args.features)
            if not args.resume:
                config = cache.adapt(config)
        records = cache.records() if cache else _records(args, config)
        if args.resume:
            summary = resume(args.resume, records, args.max_minutes, features=cache, overrides=args.set)
            out = args.resume
        else:
            sources = {"data": [_absolute(spec) for spec in args.data],
                       "images": str(Path(args.images).resolve()) if args.images else None,
                       "features": str(Path(args.features).resolve()) if args.features else None}
            summary = train(config, records, args.out, sources, args.max_minutes, features=cache)
            out = args.out
    if dist.is_main():
        print(f"trained {summary['steps']} steps ({summary['epochs']} epochs); best model in {out}/model.safetensors")
        print(f"next: showtell caption {out} IMAGE...   or   showtell evaluate {out} --data FILE")
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluation.evaluate import evaluate_run, format_table

    evaluation = evaluate_run(args.run, args.data, args.images, args.split, args.beam_size, args.ensemble,
                              device=args.device, features_dir=args.features, max_images=args.max_images,
                              objects=args.objects, results_file=args.results, spelling=CLI)
    check = None
    if args.check_metrics:
        from ..evaluation.check_metrics import check_report

        check = check_report(evaluation)
    if args.json:
        extra = {"pycocoevalcap": {m: theirs for m, (_, theirs) in check.items()}} if check else {}
        print(json.dumps({**evaluation["scores"], **extra}, sort_keys=True))
        return 0
    print(format_table(evaluation))
    if evaluation["report_path"]:
        print(f"report: {evaluation['report_path']}")
    if evaluation["evaluation_path"]:
        print(f"scores and captions kept in {evaluation['evaluation_path']}")
    if evaluation["results_path"]:
        print(f"COCO results file: {evaluation['results_path']}")
    if check:
        from ..evaluation.check_metrics import format_check

        print("\nthe same captions scored by pycocoevalcap's own tokenizer and scorers:")
        print(format_check(check))
    return 0


def cmd_prepare(args) -> int:
    from ..config import load_config
    from ..device import resolve_device
    from ..training import distributed as dist
    from ..training.prepare import prepare

    _threads_setting(args)
    config = load_config(args.config, args.set)
    records = _records(args, config)
    with dist.process_group(resolve_device(config.train.device).type):  # under torchrun each rank encodes its share
        out = prepare(records, config, args.out, batch_size=args.batch_size, sources=args.data)
    if dist.is_main():
        print(f"features and vocabulary in {out}; train with: showtell train --features {out} --out RUN_DIR")
    return 0


def cmd_export(args) -> int:
    if args.onnxruntime_web is not None and not args.web:
        raise ArgumentError("--onnxruntime-web: only with --web (it names the files the web page runs on)")
    if args.web:
        return _export_web(args)
    if args.onnx:
        try:
            from ..inference.export import export_onnx
        except ImportError as error:
            raise ShowtellError(f"export --onnx needs PyTorch ({error.name} is not installed)") from None
        out = export_onnx(args.run, args.out)
        print(f"exported the model package and encoder.onnx, init_state.onnx, step.onnx to {out}; "
              f"caption with: showtell caption {out} IMAGE...  (needs only onnxruntime, not PyTorch)")
        return 0
    from ..inference.export import export_package
    from ..run import CARD, PACKAGE_FILES, Run

    out = export_package(args.run, args.out)
    card = f" and the model card {CARD}" if Run(out).card.is_file() else ""
    print(f"exported {', '.join(PACKAGE_FILES)}{card} to {out}")
    return 0


def _export_web(args) -> int:
    try:
        from ..inference.web_export import export_web, folder_size
    except ImportError as error:
        raise ShowtellError(f"export --web needs PyTorch ({error.name} is not installed)") from None
    out = export_web(args.run, args.out, args.onnxruntime_web)
    where = "onnxruntime-web copied in: works offline" if (out / "onnxruntime-web").is_dir() else \
        "onnxruntime-web from the pinned CDN copy (give --onnxruntime-web DIR to work offline)"
    print(f"exported the web page to {out} ({folder_size(out) / 1e6:.1f} MB; {where}); "
          f"serve it with: python -m http.server -d {out}")
    return 0


def cmd_serve(args) -> int:
    from ..serve.limits import Limits
    from ..serve.server import serve

    decoded = args.max_decoded_pixels if args.max_decoded_pixels is not None else args.max_pixels
    if decoded < args.max_pixels:
        raise ShowtellError(f"--max-decoded-pixels: must be at least --max-pixels ({args.max_pixels:,}), so that "
                            f"the largest picture accepted can be decoded; got {decoded:,}")
    file_bytes = int(args.max_upload_mb * (1 << 20))
    limits = Limits(max_file_bytes=file_bytes, max_request_bytes=file_bytes * args.max_images + (1 << 20),
                    max_images=args.max_images, max_pixels=args.max_pixels, max_decoded_pixels=decoded,
                    body_timeout_s=args.body_timeout, header_timeout_s=args.header_timeout)
    serve(args.run, args.host, args.port, args.device, limits, args.max_batch, args.max_wait_ms,
          allowed_hosts=args.allowed_hosts, spelling=CLI)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, minutes=args.minutes, n_images=args.images, epochs=args.epochs)
    return 0


def cmd_config(args) -> int:
    from ..config import describe, load_config

    print(describe() if args.list else load_config(args.config, args.set).to_json(), end="")
    return 0
