"""`showtell evaluate --check-metrics`: a run's scores recomputed by pycocoevalcap's own pipeline
(its PTBTokenizer wrapper, then its Bleu, METEOR, ROUGE-L and CIDEr-D scorers), printed beside
showtell's, so a user can see on their own data that the numbers are coco-caption's."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence

from ..errors import ShowtellError
from .metrics import java_available

CHECKED = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def coco_caption_scores(references: Mapping[str, Sequence[str]], candidates: Mapping[str, str],
                        metrics: Sequence[str] = CHECKED) -> dict[str, float]:
    """Raw references and candidates scored exactly as coco-caption's evaluation script does."""
    if not java_available():
        raise ShowtellError("--check-metrics: pycocoevalcap's tokenizer runs on Java; install a Java runtime "
                            "(e.g. apt-get install default-jre-headless)")
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    keys = list(candidates)
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in references[k]] for k in keys})
    # its wrapper misaligns every later line on a blank caption, so blank candidates stay blank here
    nonblank = {k: [{"caption": candidates[k]}] for k in keys if candidates[k].strip()}
    tokenised = tokenizer.tokenize(nonblank) if nonblank else {}
    res = {k: tokenised.get(k, [""]) for k in keys}
    gts = {k: gts[k] for k in keys}
    out: dict[str, float] = {}
    if any(m.startswith("Bleu") for m in metrics):
        with contextlib.redirect_stdout(io.StringIO()):
            bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"Bleu_{i + 1}": float(v) for i, v in enumerate(bleu) if f"Bleu_{i + 1}" in metrics})
    if "METEOR" in metrics:
        meteor = Meteor()
        try:
            out["METEOR"] = float(meteor.compute_score(gts, res)[0])
        finally:
            meteor.__del__()  # stop its JVM now
    if "ROUGE_L" in metrics:
        out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in metrics:
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return out


def check_report(report: dict) -> dict[str, tuple[float, float]]:
    """{metric: (showtell's score, pycocoevalcap's)} for an `evaluate_run` report."""
    records, results = report["records"], report["results"]
    ok = [i for i, r in enumerate(results) if r.error is None]
    ours = report["scores"]
    names = [m for m in CHECKED if m in ours]
    theirs = coco_caption_scores({str(i): list(records[i].captions) for i in ok},
                                 {str(i): results[i].caption for i in ok}, names)
    return {m: (ours[m], theirs[m]) for m in names}


def format_check(check: dict[str, tuple[float, float]]) -> str:
    lines = [f"{'metric':<10} {'showtell':>10} {'pycocoevalcap':>14} {'difference':>11}"]
    for name, (ours, theirs) in check.items():
        lines.append(f"{name:<10} {ours:10.6f} {theirs:14.6f} {ours - theirs:11.2e}")
    return "\n".join(lines)
