"""Compare the decoders on synthetic scenes at the same training time (issues 5 and 16).

1. Show and Tell (NIC), Show, Attend and Tell and the Transformer decoder, each trained for the
   same wall-clock time with two seeds, scored on 1,000 fresh pictures overall and on the
   two-object ones, whose captions are about spatial relations (left of, above, ...), with the
   training throughput (caption samples per second).
2. Self-critical training (CIDEr-D reward) continued from each NIC model, scored against the
   cross-entropy model it started from (--scst-epochs 0 skips it).

On the built-in scenes by default; `--sets builtin renamed` adds other scenes (seed 7) described
with renamed words, a set no test or preset was tuned on.

    python scripts/beyond_the_seed.py [--minutes 3.5] [--seeds 0 1] [--models nic attention transformer]
                                      [--sets builtin renamed] [--scst-epochs 2] [--out runs/beyond]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

from showtell.cli.main import setup_logging
from showtell.config import load_config
from showtell.data.formats import load_dataset
from showtell.data.synthetic import write_dataset
from showtell.evaluation.evaluate import evaluate_run
from showtell.evaluation.metrics import score
from showtell.training.entry import resume, train

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


MODELS = {  # decoder settings on top of the synth preset
    "nic": [],
    "attention": ["model.decoder=attention", "model.attention_dim=128", "train.epochs=5"],
    "transformer": ["model.decoder=transformer"],
}
LABELS = {"nic": "NIC", "attention": "attention", "transformer": "transformer", "nic+scst": "NIC + self-critical"}


def scene_sets(out: Path, images: int, names: list[str], fresh: int = 1000) -> dict[str, tuple[Path, Path]]:
    """(training annotations, fresh test annotations) of each scene set: the built-in scenes, and
    other scenes (seed 7) with every shape, colour and relation word renamed, which no test or
    preset was ever tuned on (scripts/budget_comparison.py)."""
    from budget_comparison import renamed  # scripts/ is on sys.path when this script runs

    sets = {}
    if "builtin" in names:
        sets["built-in scenes"] = (write_dataset(out / "data", images, seed=0),
                                   write_dataset(out / "fresh", fresh, seed=12345))   # never seen in training or validation
    if "renamed" in names:
        sets["renamed words, seed 7"] = (renamed(write_dataset(out / "data7", images, seed=7)),
                                         renamed(write_dataset(out / "fresh7", fresh, seed=54321)))
    return sets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/beyond"))
    parser.add_argument("--minutes", type=float, default=3.5, help="cross-entropy training budget per model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sets", nargs="+", default=["builtin"], choices=["builtin", "renamed"])
    parser.add_argument("--scst-epochs", type=int, default=2, help="self-critical epochs after each NIC model (0: none)")
    parser.add_argument("--scst-minutes", type=float, default=3.0)
    parser.add_argument("--images", type=int, default=3000, help="training and validation pictures of each set")
    parser.add_argument("--fresh", type=int, default=1000, help="fresh test pictures of each set")
    args = parser.parse_args()
    setup_logging(quiet=True)
    logging.getLogger("showtell").setLevel(logging.WARNING)
    if args.out.exists():
        shutil.rmtree(args.out)
    started = time.monotonic()
    scst = args.scst_epochs > 0 and "nic" in args.models
    for set_name, (training_file, fresh) in scene_sets(args.out, args.images, args.sets, args.fresh).items():
        results: dict[str, list[dict]] = {name: [] for name in [*args.models, *(["nic+scst"] if scst else [])]}
        for seed in args.seeds:
            for name in args.models:
                config = load_config("synth", [*MODELS[name], f"train.seed={seed}"])
                records = load_dataset([str(training_file)], None, config.data)
                print(f"{set_name}: training {name} (seed {seed}) for {args.minutes:g} minutes ...", file=sys.stderr, flush=True)
                run = args.out / f"{training_file.parent.name}-{name}-{seed}"
                clock = time.monotonic()
                summary = train(config, records, run, max_minutes=args.minutes, show_progress=False)
                seconds = time.monotonic() - clock
                samples = summary["steps"] * config.train.batch_size * config.train.captions_per_image
                results[name].append({**scores(run, fresh), "epochs": summary["epochs"], "steps": summary["steps"],
                                      "samples_per_s": samples / seconds})
                print(json.dumps({"set": set_name, "model": name, "seed": seed, "steps": summary["steps"],
                                  "samples_per_s": round(samples / seconds, 1),
                                  "CIDEr": round(results[name][-1]["all"]["CIDEr"], 3)}), file=sys.stderr, flush=True)
            if scst:
                print(f"self-critical training from NIC (seed {seed}) ...", file=sys.stderr, flush=True)
                records = load_dataset([str(training_file)], None, load_config("synth").data)
                nic_run = args.out / f"{training_file.parent.name}-nic-{seed}"
                resume(nic_run, records, max_minutes=args.scst_minutes, show_progress=False,
                       overrides=[f"train.scst_epochs={args.scst_epochs}", f"train.epochs={summary_epochs(nic_run)}"])
                results["nic+scst"].append(scores(nic_run, fresh))
        print_table(set_name, results, args)
    print(f"(total {(time.monotonic() - started) / 60:.1f} minutes)")


def print_table(set_name: str, results: dict[str, list[dict]], args) -> None:
    mean = lambda rows, f: sum(f(r) for r in rows) / len(rows)  # noqa: E731
    spread = lambda rows, f: " ".join(f"{f(r):.3f}" for r in rows)  # noqa: E731
    first = next(iter(results.values()))[0]
    human = first["human"]
    print(f"\n{set_name}: {first['all']['n_images']} fresh pictures ({first['n_two']} with two objects), greedy "
          f"decoding, {args.minutes:g} minutes of cross-entropy training per model, mean of seeds "
          f"{' '.join(map(str, args.seeds))} (each seed in brackets); samples/s: caption samples trained per second "
          f"of the whole training call (validations included)\n")
    print(f"{'model':<20} {'BLEU-4':>7} {'CIDEr':>21} {'/human':>7} {'CIDEr, two objects':>21} {'distinct':>9} "
          f"{'steps':>6} {'samples/s':>10}")
    for name, rows in results.items():
        cider = lambda r: r["all"]["CIDEr"]  # noqa: E731
        trained = "steps" in rows[0]
        print(f"{LABELS[name]:<20} {mean(rows, lambda r: r['all']['Bleu_4']):7.3f} {mean(rows, cider):7.3f} "
              f"({spread(rows, cider)}) {mean(rows, cider) / human['CIDEr']:7.2f} "
              f"{mean(rows, lambda r: r['two_objects']['CIDEr']):7.3f} ({spread(rows, lambda r: r['two_objects']['CIDEr'])})"
              f"{mean(rows, lambda r: r['all']['distinct_captions']):9.0f} "
              + (f"{mean(rows, lambda r: r['steps']):6.0f} {mean(rows, lambda r: r['samples_per_s']):10.1f}" if trained else ""))
    print(f"{'human bound':<20} {human['Bleu_4']:7.3f} {human['CIDEr']:7.3f}")


def summary_epochs(run: Path) -> int:
    """Self-critical training starts right after the cross-entropy epochs that fitted in the budget."""
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    return max(1, max(h["epoch"] for h in history))


if __name__ == "__main__":
    main()
