"""A run saved by an earlier showtell (tests/data/run-v1, see tests/data/ABOUT.md) still loads,
captions as it did when it was saved, and resumes."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import ROOT

from showtell import Captioner
from showtell.cli import main

DATA = ROOT / "tests" / "data"


def _expected() -> list[dict]:
    return [json.loads(line) for line in (DATA / "run-v1-expected.jsonl").read_text().splitlines()]


def test_an_old_run_captions_as_it_did_when_it_was_saved():
    captioner = Captioner.load(DATA / "run-v1")
    beam, greedy = _expected()[:2], _expected()[2]
    pictures = [str(DATA / "run-v1-data" / "images" / e["image"]) for e in beam]
    for result, expected in zip(captioner.caption(pictures, beam_size=2, n_best=2), beam):
        assert [h.caption for h in result.hypotheses] == [h["caption"] for h in expected["hypotheses"]]
        assert [h.logprob for h in result.hypotheses] == pytest.approx([h["logprob"] for h in expected["hypotheses"]],
                                                                       abs=1e-4)
    again = captioner.caption(str(DATA / "run-v1-data" / "images" / greedy["image"]), beam_size=1)
    assert again.caption == greedy["caption"] and again.logprob == pytest.approx(greedy["logprob"], abs=1e-4)


def test_an_old_run_resumes_for_another_epoch(tmp_path):
    run = tmp_path / "run-v1"
    shutil.copytree(DATA / "run-v1", run)
    assert main(["--quiet", "train", "--resume", str(run), "--data", str(DATA / "run-v1-data" / "dataset.json"),
                 "--set", "train.epochs=2"]) == 0
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and history[1]["step"] == 4
    assert Captioner.load(run).caption(str(DATA / "run-v1-data" / "images" / "000036.png")).caption
