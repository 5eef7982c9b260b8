"""Which decoding names the shapes that are in the picture? Greedy, beam search, and minimum-Bayes-
risk (MBR) selection over the n-best list or over samples, on a trained run's test split: CIDEr,
CHAIR_s, CHAIR_i and object recall side by side (issue 31), plus the n-best's object oracle (the
hypothesis whose shapes are closest to the truth: what a perfect re-ranker could reach).

    python benchmarks/bench_decode_objects.py RUN DATASET.json [--max-images N]

e.g. after `showtell demo --out demo-run --epochs 22`:
    python benchmarks/bench_decode_objects.py demo-run/run demo-run/data/dataset.json

MBR keeps, per picture, the candidate with the highest mean CIDEr-D against the other candidates
(document frequencies over all candidates). Quality does not depend on the machine; the CPU is
printed only to say where it ran.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mbr(candidates: dict[str, list[str]]) -> dict[str, str]:
    """{picture: candidates} -> {picture: the candidate with the highest CIDEr-D against the others}."""
    from showtell.evaluation.metrics import cider_d

    refs, hyps = {}, {}
    for key, captions in candidates.items():
        for j, caption in enumerate(captions):
            refs[f"{key}/{j}"] = [c for t, c in enumerate(captions) if t != j] or [caption]
            hyps[f"{key}/{j}"] = caption
    _, per = cider_d(refs, hyps)
    return {key: captions[max(range(len(captions)), key=lambda j: per[f"{key}/{j}"])]
            for key, captions in candidates.items()}


def main(run: str, dataset: str, max_images: int | None = None) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    from common import machine, table

    from showtell.data.formats import load_dataset
    from showtell.evaluation.chair import SYNTH_SYNONYMS, ObjectWords, chair, synth_objects
    from showtell.evaluation.metrics import score_captions
    from showtell.inference.captioner import Captioner

    captioner = Captioner.load(run)
    records = [r for r in load_dataset([dataset], None, captioner.config.data) if r.split == "test"][:max_images]
    paths = [str(r.path) for r in records]
    refs = {str(i): r.captions for i, r in enumerate(records)}
    drawn = synth_objects(dataset)
    truth = {str(i): drawn[r.path.name] for i, r in enumerate(records)}
    words = ObjectWords(SYNTH_SYNONYMS)
    rows = []

    def add(name: str, captions: dict[str, str]) -> None:
        scores, _ = score_captions(refs, captions, ("CIDEr",))
        c = chair(captions, truth, words)
        rows.append((name, f"{scores['CIDEr']:.3f}", f"{c['CHAIR_s']:.3f}", f"{c['CHAIR_i']:.3f}",
                     f"{c['object_recall']:.3f}"))

    def nbest(results) -> dict[str, list[str]]:
        return {str(i): [h.caption for h in r.hypotheses] for i, r in enumerate(results)}

    add("greedy", {str(i): r.caption for i, r in enumerate(captioner.caption(paths, beam_size=1))})
    for beam in (3, 5):
        lists = nbest(captioner.caption(paths, beam_size=beam, n_best=beam))
        add(f"beam {beam}", {k: v[0] for k, v in lists.items()})
        add(f"beam {beam}, MBR over its n-best", mbr(lists))
        add(f"beam {beam}, object oracle (not a decoder)",
            {k: min(v, key=lambda c: len(set(words.mentions(c)) ^ truth[k])) for k, v in lists.items()})
    for temperature in (1.0, 0.7):
        lists = nbest(captioner.caption(paths, n_best=10, sampling={"temperature": temperature, "seed": 1}))
        add(f"10 samples at T={temperature}, MBR", mbr(lists))
    text = table(rows, ("decoding", "CIDEr", "CHAIR_s", "CHAIR_i", "recall"))
    return f"{text}\n\n{len(records)} test pictures of {dataset}; run {run}; {machine()}"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("dataset")
    parser.add_argument("--max-images", type=int, default=None)
    args = parser.parse_args()
    print(main(args.run, args.dataset, args.max_images))
