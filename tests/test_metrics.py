"""Metrics equal coco-caption's (pycocoevalcap) to 1e-6, on the same input."""

from __future__ import annotations

import logging
import random

import pytest

from showtell.evaluation import metrics
from showtell.evaluation.metrics import CiderD, cider_d, human_bound, python_ptb_tokenize, score, score_tokenised

needs_java = pytest.mark.usefixtures("java")  # skipped without Java, failed in CI (conftest.py)

WORDS = ("a red blue green small large circle square triangle two three shapes of the left right above below "
         "on and next to with picture dog man riding wave surf board").split()


def caption_sets(seed: int, n_images: int = 40):
    """References and candidates exercising the edge cases: empty candidates, repeated words,
    very long captions, candidates identical to a reference, words never seen in references."""
    rng = random.Random(seed)
    refs, cands = {}, {}
    for i in range(n_images):
        refs[f"img{i}"] = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14))) for _ in range(5)]
        kind = i % 6
        if kind == 0:
            cands[f"img{i}"] = ""
        elif kind == 1:
            cands[f"img{i}"] = " ".join([rng.choice(WORDS)] * rng.randint(2, 9))
        elif kind == 2:
            cands[f"img{i}"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 60)))
        elif kind == 3:
            cands[f"img{i}"] = refs[f"img{i}"][0]
        elif kind == 4:
            cands[f"img{i}"] = "zebra " + " ".join(rng.choice(WORDS) for _ in range(5))
        else:
            cands[f"img{i}"] = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12)))
    return refs, cands


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cider_d_equals_pycocoevalcap(seed):
    from pycocoevalcap.cider.cider import Cider

    refs, cands = caption_sets(seed)
    ours, per_image = cider_d(refs, cands)
    theirs, theirs_each = Cider().compute_score(refs, {k: [v] for k, v in cands.items()})
    assert ours == pytest.approx(float(theirs), abs=1e-6)
    for k, value in zip(refs.keys(), theirs_each):
        assert per_image[k] == pytest.approx(float(value), abs=1e-6)


@pytest.mark.parametrize("seed", [3, 4])
def test_tokenised_scores_equal_pycocoevalcap_scorers(seed):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    refs, cands = caption_sets(seed)
    res = {k: [v] for k, v in cands.items()}
    ours, _ = score_tokenised(refs, res, ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"))
    bleu, _ = Bleu(4).compute_score(refs, res, verbose=0)
    assert [ours[f"Bleu_{n}"] for n in range(1, 5)] == pytest.approx([float(b) for b in bleu], abs=1e-6)
    assert ours["ROUGE_L"] == pytest.approx(float(Rouge().compute_score(refs, res)[0]), abs=1e-6)
    assert ours["CIDEr"] == pytest.approx(float(Cider().compute_score(refs, res)[0]), abs=1e-6)


RAW_REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides the large wave in the ocean!",
          "Man on a surf board (in a wetsuit) riding a wave.", "a person surfing; the wave is big", "Surfer, wave."],
    "2": ["Two dogs playing with a frisbee in the park.", "The dog's toy is red.", "Dogs don't stop playing",
          "A couple of dogs -- brown and white -- running.", "two dogs play on the grass"],
    "3": ["A small red circle to the left of a blue square", "a red circle and a blue square.",
          "Two shapes: a red circle and a blue square", "A red circle next to a blue square on a gray background",
          "a small red circle on the left and a blue square on the right"],
}
RAW_CANDS = {"1": "a man riding a wave on a surfboard", "2": "", "3": "a red circle to the left of a blue square"}


@needs_java
def test_score_equals_the_coco_caption_pipeline_on_raw_text():
    """score() on raw strings == coco-caption's own PTBTokenizer + scorers (the README's numbers)."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    refs, cands = caption_sets(5, 30)
    refs.update(RAW_REFS)
    cands.update(RAW_CANDS)
    names = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
    ours = score(refs, cands, names, use_java=True)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in cands.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = {f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)}
    expected["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    expected["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    for name in names:
        assert ours[name] == pytest.approx(expected[name], abs=1e-6), name


@needs_java
@pytest.mark.slow
def test_meteor_equals_pycocoevalcap():
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    ours = score(RAW_REFS, RAW_CANDS, ("METEOR",), use_java=True)["METEOR"]
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in RAW_REFS.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in RAW_CANDS.items()})
    meteor = Meteor()
    assert ours == pytest.approx(float(meteor.compute_score(gts, res)[0]), abs=1e-6)


ORDINARY = [
    "A man riding a wave on top of a surfboard.", "The dog's toy is red.", "Dogs don't stop playing",
    "A couple of dogs -- brown and white -- running.", "Man on a surf board (in a wetsuit) riding a wave.",
    "It's a cat, isn't it?", "Two people at a 'fancy' restaurant.", "A sign reads \"STOP\".",
    "A giraffe standing next to a tree; it is eating leaves.", "A plate with food: rice, beans and meat!",
    "A woman's hand holding a cell-phone", "Kids can't wait for the bus...", "A 3.5 inch floppy disk",
    "The man is wearing a t-shirt and jeans", "Mr. Smith walks his dog.", "A train at the U.S. border",
    "Three shapes in a row on a black background: a large blue circle, a small green triangle and a red square",
    "A bowl of fruit costs $5 at the market", "A pizza with 50% of its slices gone", "They'll be here; we've waited.",
]


@needs_java
def test_python_tokenizer_agrees_with_coco_caption_on_ordinary_captions():
    java = metrics.ptb_tokenize({str(i): [c] for i, c in enumerate(ORDINARY)}, use_java=True)
    for i, caption in enumerate(ORDINARY):
        assert python_ptb_tokenize(caption) == java[str(i)][0], caption


def test_without_java_the_other_metrics_are_still_reported(monkeypatch, caplog):
    monkeypatch.setattr(metrics, "java_available", lambda: False)
    metrics._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="showtell"):
        result = score(RAW_REFS, RAW_CANDS)
    assert {"Bleu_4", "ROUGE_L", "CIDEr"} <= set(result) and "METEOR" not in result
    text = caplog.text
    assert "METEOR skipped" in text and "Java" in text


def test_human_bound_of_identical_references_is_perfect_bleu():
    refs = {str(i): [f"a {c} circle to the left of a square"] * 5 for i, c in enumerate(["red", "blue", "green"])}
    bound = human_bound(refs, ("Bleu_4", "CIDEr"), use_java=False)
    assert bound["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_cider_d_with_fixed_corpus_is_reusable():
    refs, cands = caption_sets(6, 20)
    scorer = CiderD(refs.values())
    total = sum(scorer.score(cands[k], refs[k]) for k in refs) / len(refs)
    assert total == pytest.approx(cider_d(refs, cands)[0], abs=1e-9)
    assert scorer.score(refs["img7"][1], refs["img7"]) > scorer.score("zebra zebra", refs["img7"])
