"""`showtell demo` end to end, shortened: it trains a real captioner whose captions depend on the picture.

It trains a fixed number of epochs (`--epochs`), not for a time budget: on a busy machine a time
budget gives fewer steps and a weaker model, and the test's outcome must not depend on the
machine's speed or load."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

# 8 epochs of 25 steps: 50 distinct captions for 100 test pictures and the colour right in 35 of 35
# one-shape pictures when measured (load average 6 on 2 cores, 7 minutes; the checks need 30 and 60%)
EPOCHS = 8


@pytest.mark.slow
def test_demo_trains_a_captioner_that_looks_at_the_pictures(tmp_path):
    out = tmp_path / "demo"
    done = run_cli("demo", "--out", str(out), "--epochs", str(EPOCHS), "--images", "1000", timeout=1800)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    assert f"for {EPOCHS} epochs" in text and f"({EPOCHS * 25} training steps" in text  # 800 training pictures / 32
    for expected in ("model, greedy", "model, beam 3", "human", "CIDEr", "BLEU-4", "model:", "reference:",
                     "object hallucination (CHAIR, greedy)",
                     f"showtell caption {out / 'run'}"):
        assert expected in text
    for name in ("model.safetensors", "config.json", "vocab.json", "samples.png", "report.html"):
        assert (out / "run" / name).is_file(), name

    # the classic failure is one caption for every picture; and colours must follow the picture
    from showtell import Captioner

    data = json.loads((out / "data" / "dataset.json").read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    captioner = Captioner.load(out / "run")
    results = captioner.caption([str(out / "data" / im["filepath"] / im["filename"]) for im in test], beam_size=1)
    captions = [r.caption for r in results]
    assert len(set(captions)) >= 0.3 * len(captions), f"only {len(set(captions))} distinct captions"
    singles = [(im, c) for im, c in zip(test, captions) if len(im["scene"]["objects"]) == 1]
    right = sum(im["scene"]["objects"][0]["colour"] in c.split() for im, c in singles)
    assert right >= 0.6 * len(singles), f"colour right in {right} of {len(singles)} one-object pictures"


def test_demo_with_epochs_trains_exactly_that_many_whatever_the_time_budget(tmp_path):
    out = tmp_path / "demo"
    done = run_cli("demo", "--out", str(out), "--epochs", "2", "--images", "40", "--minutes", "0.0001", timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    history = [json.loads(line) for line in (out / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert "for 2 epochs" in done.stdout
