"""`showtell evaluate --check-metrics` prints pycocoevalcap's own scores beside showtell's, and
they agree; on raw text with awkward punctuation showtell's `score` equals coco-caption's pipeline."""

from __future__ import annotations

import json

import pytest

from showtell.cli import main
from showtell.errors import ShowtellError
from showtell.evaluation import metrics
from showtell.evaluation.check_metrics import coco_caption_scores

REFS = {"a": ["A man riding a wave on top of a surfboard.", "A surfer's 'big' wave!", "Man on a surf-board (wetsuit)."],
        "b": ["Two dogs don't stop playing...", "The dogs' toys, 1,000 of them?!", "A dog 5'5\" tall"],
        "c": ["A sign that says 'no parking'.", "A \u201cStop\u201d sign at 2:30 pm", "a red sign"]}
CANDS = {"a": "a man riding a wave on a surfboard", "b": "two dogs playing with toys", "c": ""}


def test_score_equals_coco_captions_pipeline_on_awkward_text(java):
    names = ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
    ours = metrics.score(REFS, CANDS, names, use_java=True)
    theirs = coco_caption_scores(REFS, CANDS, names)
    for name in names:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-6), name
    assert theirs["CIDEr"] > 0


def test_evaluate_check_metrics_prints_both_and_they_agree(java, trained_run, synth_dir, capsys):
    assert main(["--quiet", "evaluate", str(trained_run), "--data", str(synth_dir / "dataset.json"),
                 "--max-images", "6", "--check-metrics", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    theirs = scores["pycocoevalcap"]
    assert set(theirs) >= {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr"}
    for name, value in theirs.items():
        assert scores[name] == pytest.approx(value, abs=1e-6), name


def test_check_metrics_without_java_says_what_to_install(monkeypatch):
    monkeypatch.setattr("showtell.evaluation.check_metrics.java_available", lambda: False)
    with pytest.raises(ShowtellError, match="needs|runs on Java"):
        coco_caption_scores(REFS, CANDS)
