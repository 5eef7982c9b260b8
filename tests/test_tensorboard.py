"""train.log=tensorboard: the events read back with TensorBoard's own reader equal history.jsonl."""

from __future__ import annotations

import json
import sys

import pytest
from test_training_core import TINY, Killed, records_of

import showtell.training.loop as training
from showtell.cli import main
from showtell.config import load_config
from showtell.training.entry import resume, train

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

BOARD = [*TINY, "train.log=tensorboard", "train.epochs=2"]


def _events(run):
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _scalars(events) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_the_events_hold_every_number_of_the_history(tmp_path, synth_dir):
    summary = train(load_config("synth", BOARD), records_of(synth_dir), tmp_path / "run", show_progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    events = _events(tmp_path / "run")
    scalars = _scalars(events)
    expected = {"train/loss", "train/perplexity", "train/lr", "val/loss", "val/perplexity", "val/Bleu_4", "val/CIDEr",
                "val/distinct_captions", "step/loss", "step/lr"}
    assert expected <= set(scalars)
    names = {"train/loss": "train_loss", "train/perplexity": "train_perplexity", "train/lr": "lr", "val/loss": "val_loss",
             "val/perplexity": "val_perplexity", "val/Bleu_4": "val_Bleu_4", "val/CIDEr": "val_CIDEr",
             "val/distinct_captions": "val_distinct_captions"}
    for tag, key in names.items():
        assert [step for step, _ in scalars[tag]] == [h["step"] for h in history], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([h[key] for h in history], rel=1e-6), tag
    assert [step for step, _ in scalars["step/loss"]] == list(range(summary["steps"]))
    # an epoch's training loss is the mean of its updates' losses
    per_epoch = summary["steps"] // len(history)
    first = [v for _, v in scalars["step/loss"][:per_epoch]]
    assert sum(first) / per_epoch == pytest.approx(history[0]["train_loss"], rel=1e-5)
    texts = events.Tensors("val/samples/text_summary")
    assert [t.step for t in texts] == [h["step"] for h in history]
    assert history[-1]["val_samples"][0]["caption"] in texts[-1].tensor_proto.string_val[0].decode()


@pytest.mark.parametrize("kill_at", ["save_checkpoint", "should_stop"])
def test_a_resumed_run_does_not_double_its_curves(tmp_path, synth_dir, monkeypatch, kill_at):
    """Epochs of 4 steps, a checkpoint every 3 and at each epoch's end. Killed after the validation at
    step 4 but before its checkpoint: resumed from step 3, the update at 3 and that validation are
    hidden and made again. Killed after update 5 (index 4): resumed from the epoch's checkpoint at
    step 4, the validation at 4 is hidden and written again from the history it kept."""
    records = records_of(synth_dir)
    config = load_config("synth", BOARD)
    train(config, records, tmp_path / "whole", show_progress=False)
    if kill_at == "save_checkpoint":
        real = training.save_checkpoint

        def kill(s, state, optimizer):
            if state.global_step == 4:
                raise Killed
            real(s, state, optimizer)
    else:
        calls = iter(range(1000))

        def kill(deadline, requested, device):   # called after each update
            if next(calls) == 4:
                raise Killed
            return False

    monkeypatch.setattr(training, kill_at, kill)
    with pytest.raises(Killed):
        train(config, records, tmp_path / "killed", show_progress=False)
    monkeypatch.undo()
    killed = _scalars(_events(tmp_path / "killed"))
    updates = 4 if kill_at == "save_checkpoint" else 5
    assert [s for s, _ in killed["val/loss"]] == [4] and [s for s, _ in killed["step/loss"]] == list(range(updates))
    resume(tmp_path / "killed", records, show_progress=False)
    whole, resumed = _scalars(_events(tmp_path / "whole")), _scalars(_events(tmp_path / "killed"))
    assert whole.keys() == resumed.keys()
    for tag in whole:
        assert [s for s, _ in resumed[tag]] == [s for s, _ in whole[tag]], tag
        assert [v for _, v in resumed[tag]] == pytest.approx([v for _, v in whole[tag]], rel=1e-6), tag


def test_without_tensorboard_installed_the_error_is_one_line(tmp_path, synth_dir, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    code = main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(out), "--config", "synth",
                 *(x for s in BOARD for x in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train.log=tensorboard" in err and "showtell[tensorboard]" in err
    assert not out.exists()


def test_only_rank_0_writes(tmp_path):
    from showtell.run import Run
    from showtell.training.tensorboard import open_log

    config = load_config("synth", ["train.log=tensorboard"])
    assert open_log(config, Run(tmp_path), 0, main_process=False) is None
    assert not (tmp_path / "tensorboard").exists()
    open_log(config, Run(tmp_path), 0, main_process=True).close()
    assert any((tmp_path / "tensorboard").iterdir())
