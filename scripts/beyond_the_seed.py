"""Reproduce issue 5's comparisons on the built-in synthetic scenes (about 18 minutes on 2 CPU cores).

1. Show and Tell (NIC) and Show, Attend and Tell, each trained for the same wall-clock time with
   two seeds, scored on 1,000 fresh pictures overall and on the two-object ones, whose captions
   are about spatial relations (left of, above, ...).
2. Self-critical training (CIDEr-D reward) continued from each NIC model, scored against the
   cross-entropy model it started from.

    python scripts/beyond_the_seed.py [--minutes 3.5] [--seeds 0 1] [--out runs/beyond]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from showtell.cli import setup_logging
from showtell.config import load_config
from showtell.data.formats import load_dataset
from showtell.data.synthetic import write_dataset
from showtell.evaluate_run import evaluate_run
from showtell.metrics import score
from showtell.train import resume, train

METRICS = ("Bleu_4", "CIDEr")


def scores(run: Path, annotations: Path) -> dict:
    """Greedy scores on every picture of `annotations` (fresh ones), overall and on two-object scenes."""
    data = json.loads(annotations.read_text())
    everything = annotations.parent / "all-as-test.json"
    for image in data["images"]:
        image["split"] = "test"
    everything.write_text(json.dumps(data))
    report = evaluate_run(run, [str(everything)], None, "test", beam_size=1, write_html=False, show_progress=False,
                          metrics=METRICS)
    scenes = {im["filename"]: im["scene"] for im in data["images"]}
    two = [i for i, r in enumerate(report["records"]) if len(scenes[r.path.name]["objects"]) == 2]
    pair = score({str(i): report["records"][i].captions for i in two},
                 {str(i): report["results"][i].caption for i in two}, METRICS)
    return {"all": report["scores"], "two_objects": pair, "n_two": len(two), "human": report["human"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/beyond"))
    parser.add_argument("--minutes", type=float, default=3.5, help="cross-entropy training budget per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--scst-epochs", type=int, default=2)
    parser.add_argument("--scst-minutes", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    setup_logging(quiet=True)
    logging.getLogger("showtell").setLevel(logging.WARNING)
    if args.out.exists():
        shutil.rmtree(args.out)
    annotations = write_dataset(args.out / "data", args.images, seed=0)
    fresh = write_dataset(args.out / "fresh", 1000, seed=12345)  # never seen in training or validation
    started = time.monotonic()

    settings = {"nic": [], "attention": ["model.decoder=attention", "model.attention_dim=128", "train.epochs=5"]}
    results: dict[str, list[dict]] = {"nic": [], "attention": [], "nic+scst": []}
    for seed in args.seeds:
        for name, extra in settings.items():
            config = load_config("synth", [*extra, f"train.seed={seed}"])
            records = load_dataset([str(annotations)], None, config.data)
            print(f"training {name} (seed {seed}) for {args.minutes:g} minutes ...", file=sys.stderr, flush=True)
            run = args.out / f"{name}-{seed}"
            summary = train(config, records, run, max_minutes=args.minutes, show_progress=False)
            results[name].append({**scores(run, fresh), "epochs": summary["epochs"]})
        print(f"self-critical training from NIC (seed {seed}) ...", file=sys.stderr, flush=True)
        records = load_dataset([str(annotations)], None, load_config("synth").data)
        resume(args.out / f"nic-{seed}", records, max_minutes=args.scst_minutes, show_progress=False,
               overrides=[f"train.scst_epochs={args.scst_epochs}", f"train.epochs={summary_epochs(args.out / f'nic-{seed}')}"])
        results["nic+scst"].append(scores(args.out / f"nic-{seed}", fresh))

    mean = lambda rows, f: sum(f(r) for r in rows) / len(rows)  # noqa: E731
    spread = lambda rows, f: " ".join(f"{f(r):.3f}" for r in rows)  # noqa: E731
    human = results["nic"][0]["human"]
    print(f"\nsynthetic scenes: {results['nic'][0]['all']['n_images']} fresh pictures "
          f"({results['nic'][0]['n_two']} with two objects), greedy decoding, {args.minutes:g} minutes of "
          f"cross-entropy training per model, mean of seeds {' '.join(map(str, args.seeds))} (each seed in brackets)\n")
    print(f"{'model':<24} {'BLEU-4':>7} {'CIDEr':>7} {'CIDEr, two objects':>28} {'distinct':>9}")
    for name, label in (("nic", "NIC"), ("attention", "attention"), ("nic+scst", "NIC + self-critical")):
        rows = results[name]
        print(f"{label:<24} {mean(rows, lambda r: r['all']['Bleu_4']):7.3f} {mean(rows, lambda r: r['all']['CIDEr']):7.3f} "
              f"{mean(rows, lambda r: r['two_objects']['CIDEr']):7.3f} ({spread(rows, lambda r: r['two_objects']['CIDEr'])})"
              f"{mean(rows, lambda r: r['all']['distinct_captions']):9.0f}")
    print(f"{'human bound':<24} {human['Bleu_4']:7.3f} {human['CIDEr']:7.3f}")
    print(f"\nCIDEr of each seed: NIC {spread(results['nic'], lambda r: r['all']['CIDEr'])}; attention "
          f"{spread(results['attention'], lambda r: r['all']['CIDEr'])}; NIC + self-critical "
          f"{spread(results['nic+scst'], lambda r: r['all']['CIDEr'])}")
    print(f"(total {(time.monotonic() - started) / 60:.1f} minutes)")


def summary_epochs(run: Path) -> int:
    """Self-critical training starts right after the cross-entropy epochs that fitted in the budget."""
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return max(1, max(h["epoch"] for h in history))


if __name__ == "__main__":
    main()
