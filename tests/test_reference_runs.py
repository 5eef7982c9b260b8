"""Saved attention and Transformer runs (tests/data/run-{attention,transformer}-v1, written by
scripts/make_reference_runs.py) decode and score as they did when they were saved: the attention
step and the Transformer's memory are pinned by recorded outputs, not only by agreeing with each
other. Only pictures whose choices are 0.02+ nats apart were recorded, so no CPU can swap them."""

from __future__ import annotations

import importlib.util
import json

import pytest
from conftest import ROOT

from showtell import Captioner

DATA = ROOT / "tests" / "data"
spec = importlib.util.spec_from_file_location("make_reference_runs", ROOT / "scripts" / "make_reference_runs.py")
reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference)


def _rows(name: str) -> list[dict]:
    rows = [json.loads(line) for line in (DATA / f"run-{name}-v1-expected.jsonl").read_text().splitlines()]
    assert len(rows) >= 20 and min(r["greedy_margin"] for r in rows) >= reference.MARGIN
    return rows


@pytest.fixture(scope="module", params=["attention", "transformer"])
def saved(request):
    return Captioner.load(DATA / f"run-{request.param}-v1"), _rows(request.param)


def _picture(row: dict) -> str:
    return str(DATA / "run-v1-data" / "images" / row["image"])


def test_greedy_and_beam_captions_and_their_logprobs_are_the_saved_ones(saved):
    captioner, rows = saved
    pictures = [_picture(r) for r in rows]
    for row, greedy, beam in zip(rows, captioner.caption(pictures, beam_size=1),
                                 captioner.caption(pictures, beam_size=3, n_best=2)):
        assert greedy.caption == row["greedy"], row["image"]
        assert greedy.logprob == pytest.approx(row["greedy_logprob"], abs=1e-4)
        assert [h.caption for h in beam.hypotheses] == row["beam"], row["image"]
        assert [h.logprob for h in beam.hypotheses] == pytest.approx(row["beam_logprobs"], abs=1e-4)


def test_teacher_forcing_and_scoring_give_the_saved_logprobs(saved):
    """The training path (CaptionModel.forward over whole captions) and the decoding path (step by
    step, Captioner.logprob) each against the values recorded when the run was saved."""
    captioner, rows = saved
    for row in rows[:8]:
        for text, nll, word_logprobs in zip(row["references"], row["reference_nll"], row["reference_word_logprobs"]):
            assert reference.teacher_forced_nll(captioner, _picture(row), text) == pytest.approx(nll, abs=1e-3)
            assert captioner.logprob(_picture(row), text).word_logprobs == pytest.approx(word_logprobs, abs=1e-4)
