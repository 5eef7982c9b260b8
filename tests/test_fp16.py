"""train.precision=fp16: float16 autocast and a gradient scaler (the code path, on the CPU)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_training_core import TINY, assert_same_run, records_of

import showtell.training.entry as entry
import showtell.training.loop as loop
from showtell.config import load_config
from showtell.fileio import load_state
from showtell.run import Run
from showtell.training.entry import resume, train

FP16 = [*TINY, "train.precision=fp16", "train.epochs=2"]


def _last_state(run):
    return load_state(run / "checkpoints" / f"step-{Run(run).checkpoints()[-1]:09d}.state.pt")


def test_fp16_trains_in_float16_with_a_scaler_kept_in_the_checkpoint(tmp_path, synth_dir, monkeypatch):
    seen = set()
    build = entry.build_model

    def spying_build(*args, **kwargs):     # the output layer's dtype while training
        model = build(*args, **kwargs)
        model.decoder.output.register_forward_hook(lambda m, i, out: seen.add(out.dtype) if m.training else None)
        return model

    monkeypatch.setattr(entry, "build_model", spying_build)
    scales = []
    step = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step", lambda self, opt, *a, **k: (scales.append(self.get_scale()),
                                                                                  step(self, opt, *a, **k))[1])
    summary = train(load_config("synth", FP16), records_of(synth_dir), tmp_path / "run", show_progress=False)
    assert seen == {torch.float16}
    assert len(scales) == summary["steps"] and scales[0] == 65536.0
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    scaler = _last_state(tmp_path / "run")["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] + math.log2(65536 / scaler["scale"]) >= 1


@pytest.mark.slow
def test_an_fp16_run_stopped_and_resumed_continues_its_scaler_exactly(tmp_path, synth_dir, monkeypatch):
    records = records_of(synth_dir)
    config = load_config("synth", FP16)
    train(config, records, tmp_path / "whole", show_progress=False)
    steps = iter(range(1000))   # stop after step 3 (mid-epoch), as a budget or a signal would
    monkeypatch.setattr(loop, "should_stop", lambda deadline, requested, device: next(steps) == 2)
    assert train(config, records, tmp_path / "stopped", show_progress=False)["steps"] == 3
    monkeypatch.undo()
    assert _last_state(tmp_path / "stopped")["scaler"]["_growth_tracker"] > 0   # something to lose
    resume(tmp_path / "stopped", records, show_progress=False)
    assert _last_state(tmp_path / "whole")["scaler"] == _last_state(tmp_path / "stopped")["scaler"]
    assert_same_run(tmp_path / "whole", tmp_path / "stopped")


def test_fp32_keeps_no_scaler(tmp_path, synth_dir):
    train(load_config("synth", [*TINY, "train.epochs=1"]), records_of(synth_dir), tmp_path / "run", show_progress=False)
    assert "scaler" not in _last_state(tmp_path / "run")
