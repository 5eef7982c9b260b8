"""Budgeted training against a truncated schedule, at the same wall-clock budget.

For each data set and decoder, two runs with `--max-minutes M`: one with the learning-rate decay
planned to end at the budget (`train.budget_schedule=true`, the default), one that cuts the
schedule planned for `train.epochs` where the budget ends (`false`). Both are scored with greedy
decoding on the held-out test pictures. The data sets: the built-in scenes (seed 0) and a second
set the preset was never tuned on (seed 7, every shape, colour and relation word renamed).

    python scripts/budget_comparison.py [--minutes 2] [--images 1500] [--out runs/budget]
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
from pathlib import Path

from showtell.cli.main import setup_logging
from showtell.config import load_config
from showtell.data.formats import load_dataset
from showtell.data.synthetic import write_dataset
from showtell.evaluation.evaluate import evaluate_run
from showtell.training.entry import train

RENAMED = {"circle": "disc", "circles": "discs", "square": "box", "squares": "boxes", "triangle": "wedge",
           "triangles": "wedges", "red": "crimson", "green": "lime", "blue": "navy", "yellow": "amber",
           "left": "west", "right": "east", "above": "over", "below": "under", "small": "tiny", "large": "huge",
           "background": "backdrop"}


def renamed(annotations: Path) -> Path:
    """The same kind of pictures described with other words: a vocabulary the preset never saw."""
    data = json.loads(annotations.read_text())
    pattern = re.compile(r"\b(" + "|".join(RENAMED) + r")\b")
    for image in data["images"]:
        for sentence in image["sentences"]:
            sentence["raw"] = pattern.sub(lambda m: RENAMED[m.group(1)], sentence["raw"])
            sentence["tokens"] = [RENAMED.get(t, t) for t in sentence["tokens"]]
    out = annotations.with_name("renamed.json")
    out.write_text(json.dumps(data))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/budget"))
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget of every run")
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--decoders", nargs="+", default=["nic", "attention"])
    args = parser.parse_args()
    setup_logging(quiet=True)
    logging.getLogger("showtell").setLevel(logging.WARNING)
    if args.out.exists():
        shutil.rmtree(args.out)
    sets = {"built-in scenes (seed 0)": write_dataset(args.out / "seed0", args.images, seed=0),
            "renamed words (seed 7)": renamed(write_dataset(args.out / "seed7", args.images, seed=7))}
    rows = []
    for set_name, data_file in sets.items():
        for decoder in args.decoders:
            for budgeted in (False, True):
                config = load_config("synth", [f"model.decoder={decoder}", f"train.budget_schedule={budgeted}"])
                records = load_dataset([str(data_file)], data_file.parent, config.data)
                run = args.out / f"{data_file.stem}-{data_file.parent.name}-{decoder}-{budgeted}"
                summary = train(config, records, run, max_minutes=args.minutes, show_progress=False)
                history = run / "history.jsonl"   # absent when the budget ended before the first epoch did
                last = json.loads(history.read_text().splitlines()[-1]) if history.exists() else {"lr": float("nan")}
                report = evaluate_run(run, [str(data_file)], data_file.parent, "test", beam_size=1,
                                      write_html=False, show_progress=False, metrics=("Bleu_4", "CIDEr"))
                s, human = report["scores"], report["human"]
                rows.append({"set": set_name, "decoder": decoder, "schedule": "planned" if budgeted else "truncated",
                             "steps": summary["steps"], "planned": summary["planned_steps"], "last_lr": last["lr"],
                             "Bleu_4": s["Bleu_4"], "CIDEr": s["CIDEr"], "human_CIDEr": human["CIDEr"],
                             "distinct": s["distinct_captions"], "n": s["n_images"]})
                print(json.dumps(rows[-1]), flush=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    print(f"\n{'set':26} {'decoder':9} {'schedule':9} {'steps':>5} {'last lr':>8} {'BLEU-4':>6} {'CIDEr':>6} "
          f"{'/human':>6} {'distinct':>8}")
    for r in rows:
        print(f"{r['set']:26} {r['decoder']:9} {r['schedule']:9} {r['steps']:5d} {r['last_lr']:8.5f} {r['Bleu_4']:6.3f} "
              f"{r['CIDEr']:6.3f} {r['CIDEr'] / r['human_CIDEr']:6.2f} {r['distinct']:>4}/{r['n']}")


if __name__ == "__main__":
    main()
