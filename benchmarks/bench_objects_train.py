"""Which configuration names the shapes that are in the picture within the same CPU minutes (issue
31)? Trains each arm on the built-in scenes for a fixed number of minutes (or, with --epochs, a
fixed number of steps), arms alternating within each scene seed, then evaluates each greedily on
the test split, and with the run's own decoding where that is a beam (the preset's beam 3 for
attention): CIDEr against the human bound, CHAIR_s, CHAIR_i, object recall, steps trained, and
two counts of slips: captions that swap a circle and a square (NIC's commonest), and captions that
name one shape twice for a picture of two different shapes (attention's commonest).

    python benchmarks/bench_objects_train.py --out /tmp/objects [--minutes 8] [--seeds 0 1]
        [--arms nic attention demo] [--image-size 96] [--images 3000] [--renamed] [--epochs N]
        [--set KEY=VALUE]...     (each arm's settings on top of the synth preset, one per --set)

`--renamed` rewrites every colour word of the captions (red -> crimson, ...), so a choice cannot
be tuned to one set of words; CHAIR counts shapes, which keep their names. Times are the machine's,
so the CPU (lscpu flags) and the load average are printed with the table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from common import machine, table  # noqa: E402

from showtell.cli.demo import DEMO_SETTINGS  # noqa: E402

RENAMED = {"red": "crimson", "green": "olive", "blue": "navy", "yellow": "amber"}
ARMS = {"nic": ["model.decoder=nic"], "attention": ["model.decoder=attention"], "demo": list(DEMO_SETTINGS)}


def scenes(out: Path, seed: int, images: int, renamed: bool) -> Path:
    from showtell.data.synthetic import write_dataset

    folder = out / f"scenes-{seed}-{images}{'-renamed' if renamed else ''}"
    path = folder / "dataset.json"
    if path.is_file():
        return path
    write_dataset(folder, images, seed=seed)
    if renamed:
        data = json.loads(path.read_text())
        for image in data["images"]:
            for sentence in image["sentences"]:
                sentence["tokens"] = [RENAMED.get(t, t) for t in sentence["tokens"]]
                sentence["raw"] = " ".join(RENAMED.get(w, w) for w in sentence["raw"].split())
        path.write_text(json.dumps(data))
    return path


def slips(report: dict, data: Path) -> dict[str, int]:
    """circle_square_swaps: captions that name an absent shape where every absent one named and
    every present one left out is a circle or a square (one called the other). repeated_shape:
    captions of a picture with two kinds of shape that name one kind twice and nothing else."""
    from showtell.evaluation.chair import SYNTH_SYNONYMS, ObjectWords, synth_objects

    truth, shapes, pair = synth_objects(data), ObjectWords(SYNTH_SYNONYMS), {"circle", "square"}
    swaps = repeats = 0
    for record, result in zip(report["records"], report["results"]):
        drawn, mentions = truth[record.path.name], shapes.mentions(result.caption)
        absent, missed = set(mentions) - drawn, drawn - set(mentions)
        swaps += bool(absent) and bool(missed) and absent <= pair and missed <= pair
        repeats += len(drawn) == 2 and len(mentions) == 2 and len(set(mentions)) == 1
    return {"circle_square_swaps": swaps, "repeated_shape": repeats}


def run_arm(data: Path, run: Path, settings: list[str], minutes: float | None, epochs: int | None) -> list[dict]:
    """Train one arm, then score it greedily and, where the run's own decoding is a beam (the preset's
    for attention), with that too: one result per decoding."""
    from showtell.config import load_config
    from showtell.data.formats import load_dataset
    from showtell.decoding.options import decoding_label
    from showtell.evaluation.evaluate import evaluate_run
    from showtell.training.entry import train

    shutil.rmtree(run, ignore_errors=True)       # this benchmark's own arm folder from an earlier run
    config = load_config("synth", [*settings, *([f"train.epochs={epochs}"] if epochs else [])])
    records = load_dataset([str(data)], None, config.data)
    started = time.monotonic()
    summary = train(config, records, run, {"data": [str(data)], "images": None, "features": None},
                    max_minutes=None if epochs else minutes, show_progress=False)
    trained = time.monotonic() - started
    results = []
    for beam_size in sorted({1, config.decode.beam_size}):
        report = evaluate_run(run, [str(data)], None, "test", beam_size=beam_size, write_html=False, show_progress=False)
        s, human = report["scores"], report["human"]
        results.append({"decoding": decoding_label(beam_size), "steps": summary["steps"], "minutes": trained / 60,
                        "cider_human": s["CIDEr"] / human["CIDEr"], "CHAIR_s": s["CHAIR_s"], "CHAIR_i": s["CHAIR_i"],
                        "recall": s["object_recall"], "distinct": len({r.caption for r in report["results"]}),
                        "images": len(report["results"]), **slips(report, data)})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--epochs", type=int, help="train this many epochs (fixed steps) instead of --minutes")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--arms", nargs="+", default=["nic", "attention"], choices=list(ARMS),
                        help="demo: the demo's settings (showtell.cli.demo.DEMO_SETTINGS)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--renamed", action="store_true")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        data = scenes(args.out, seed, args.images, args.renamed)
        for arm in args.arms:       # alternating within a seed: a slower stretch of a shared machine hits both
            settings = [*ARMS[arm], f"data.image_size={args.image_size}", f"train.seed={seed}", *args.set]
            name = f"{arm}-{seed}{'-renamed' if args.renamed else ''}"
            for r in run_arm(data, args.out / name, settings, args.minutes, args.epochs):
                rows.append((name, r["decoding"], r["steps"], f"{r['minutes']:.1f}", f"{r['cider_human']:.2f}",
                             f"{r['CHAIR_s']:.3f}", f"{r['CHAIR_i']:.3f}", f"{r['recall']:.3f}",
                             f"{r['distinct']}/{r['images']}", r["circle_square_swaps"], r["repeated_shape"]))
                print(json.dumps({"arm": name, **r}), flush=True)
    budget = f"{args.epochs} epochs" if args.epochs else f"{args.minutes:g} minutes"
    print(f"\nsynth preset at {args.image_size} px, {args.images} scenes, {budget} per arm, on the test split "
          f"greedily and with the run's own decoding; settings {args.set or 'preset'}; {machine()}; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    print(table(rows, ("arm", "decoding", "steps", "minutes", "CIDEr/human", "CHAIR_s", "CHAIR_i", "recall", "distinct",
                       "circle/square swaps", "repeated shape")))


if __name__ == "__main__":
    main()
