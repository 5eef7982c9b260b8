"""Run folders under misuse: no command replaces another run's files, one process at a time, damaged
files are one line (or a warning for a torn last line), a disk-full start is no dead end, and a
resume says what it changes and refuses what contradicts the run's progress."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest
from conftest import ROOT, run_cli

from showtell import fileio
from showtell.cli import main
from showtell.run import Run

TINY = ["--config", "synth", "--set", "model.embed_dim=16", "--set", "model.hidden_dim=32", "--set", "train.epochs=2",
        "--set", "train.batch_size=16", "--set", "data.image_size=32", "--set", "train.val_max_images=8",
        "--set", "train.warmup_steps=2"]


@pytest.fixture
def run(tmp_path, trained_run):
    """A copy of the trained run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def _train(synth_dir, out, *extra):
    return main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(out), *TINY, *extra])


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- export -----------------------------------------------------------------------------------------------
def test_export_never_replaces_another_runs_files(run, tmp_path, synth_dir, capsys):
    other = tmp_path / "other"
    assert _train(synth_dir, other, "--set", "train.epochs=1", "--set", "data.min_word_count=3") == 0
    before = _snapshot(other)
    assert main(["export", str(run), str(other)]) == 2
    assert "holds other files" in capsys.readouterr().err and _snapshot(other) == before
    package = tmp_path / "package"
    assert main(["export", str(run), str(package)]) == 0
    assert main(["export", str(run), str(package)]) == 0            # an earlier export of the same run
    assert main(["export", str(other), str(package)]) == 2           # another model's export
    assert "export of another model" in capsys.readouterr().err


# --- one process at a time ----------------------------------------------------------------------------------
def test_a_second_process_is_refused_naming_the_holder(run, synth_dir):
    with Run(run).locked("train"):
        done = run_cli("train", "--resume", str(run), "--data", str(synth_dir / "dataset.json"))
        assert done.returncode == 2 and "in use by showtell train (pid" in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1
        fresh = run_cli("train", "--data", str(synth_dir / "dataset.json"), "--out", str(run), *TINY)
        assert fresh.returncode == 2 and "in use by" in fresh.stderr


def test_a_lock_left_by_a_killed_process_does_not_block(run, synth_dir):
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from showtell.run import Run
with Run({str(run)!r}).locked("train"):
    print("held", flush=True)
    time.sleep(600)
"""], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (run / ".lock.json").exists()                       # the dead holder's note is still there
    assert main(["--quiet", "train", "--resume", str(run), "--data", str(synth_dir / "dataset.json"),
                 "--set", "train.epochs=3"]) == 0


def test_evaluate_of_a_run_in_use_prints_its_scores_and_writes_nothing(run, synth_dir, capsys):
    before = _snapshot(run)
    with Run(run).locked("train"):
        assert main(["evaluate", str(run), "--data", str(synth_dir / "dataset.json"), "--max-images", "4"]) == 0
        assert {k: v for k, v in _snapshot(run).items() if k.name != ".lock.json"} == before
    out, err = capsys.readouterr()
    assert "CIDEr" in out and "in use by showtell train" in err


# --- a run folder that cannot be written ----------------------------------------------------------------------
class _FullDisk:
    """tempfile for fileio: every atomic write under `folder` fails as on a full disk."""

    def __init__(self, folder):
        self.folder = str(folder)

    def mkstemp(self, *args, dir=None, prefix="", **kwargs):  # noqa: A002
        if str(dir).startswith(self.folder):
            raise OSError(errno.ENOSPC, "No space left on device", str(dir))
        return tempfile.mkstemp(*args, dir=dir, prefix=prefix, **kwargs)


def test_evaluate_on_a_full_disk_prints_every_score_and_names_what_it_could_not_write(run, synth_dir, capsys,
                                                                                   monkeypatch):
    monkeypatch.setattr(fileio, "tempfile", _FullDisk(run))
    assert main(["evaluate", str(run), "--data", str(synth_dir / "dataset.json"), "--max-images", "4"]) == 0
    out, err = capsys.readouterr()
    assert "CIDEr" in out and "perplexity" in out and "report:" not in out
    assert "No space left on device" in err and f"could not write the report {run}" in err


def test_a_start_stopped_by_a_full_disk_before_its_first_checkpoint_starts_over(tmp_path, synth_dir, capsys,
                                                                                monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(fileio, "tempfile", _FullDisk(out / "checkpoints"))
    assert _train(synth_dir, out) == 1
    monkeypatch.undo()
    assert (out / "config.json").exists() and not Run(out).checkpoints()
    assert main(["train", "--resume", str(out), "--data", str(synth_dir / "dataset.json")]) == 2
    assert "start it over with showtell train --out" in capsys.readouterr().err
    assert _train(synth_dir, out, "--set", "train.epochs=1") == 0   # the same --out: nothing was lost, so it starts over
    assert Run(out).has_model() and len(Run(out).history()) == 1


# --- damaged files ---------------------------------------------------------------------------------------------
def test_a_torn_last_history_line_is_dropped_with_a_warning(run, synth_dir, capsys):
    with open(run / "history.jsonl", "a") as f:
        f.write('{"epoch": 3, "step": 1')                              # a crash half-way through a line
    assert main(["evaluate", str(run), "--data", str(synth_dir / "dataset.json"), "--max-images", "4", "--json"]) == 0
    assert "cut off" in capsys.readouterr().err
    assert main(["--quiet", "train", "--resume", str(run), "--data", str(synth_dir / "dataset.json"),
                 "--set", "train.epochs=3"]) == 0
    assert [h["epoch"] for h in Run(run).history()] == [1, 2, 3]


def test_a_damaged_data_json_is_one_line_naming_it(run, capsys):
    (run / "data.json").write_text('{"data": ["x.json"')
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "data.json: damaged" in err and "--data" in err


def test_another_runs_vocabulary_is_named_with_both_sizes(run, tmp_path, synth_dir, capsys):
    other = tmp_path / "other"
    assert _train(synth_dir, other, "--set", "train.epochs=1", "--set", "data.min_word_count=40") == 0
    shutil.copyfile(other / "vocab.json", run / "vocab.json")
    assert main(["caption", str(run), str(sorted((synth_dir / "images").glob("*.png"))[0])]) == 2
    err = capsys.readouterr().err
    assert "vocab.json: has" in err and "was trained with" in err and "()" not in err


# --- what a resume changes ----------------------------------------------------------------------------------------
def test_a_resume_refuses_fewer_epochs_than_done_and_says_what_it_changes(run, synth_dir, capsys, caplog):
    config = (run / "config.json").read_bytes()
    assert main(["train", "--resume", str(run), "--data", str(synth_dir / "dataset.json"), "--set", "train.epochs=1"]) == 2
    assert "already trained 2 epochs; give 2 or more" in capsys.readouterr().err
    assert (run / "config.json").read_bytes() == config                 # refused: nothing written
    assert main(["train", "--resume", str(run), "--data", str(synth_dir / "dataset.json"), "--set", "train.epochs=3"]) == 0
    assert "train.epochs 2 -> 3" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3


# a training that stops at the start of its first epoch (holding its run's lock, its config
# written) until a line arrives on stdin, then trains on
_HELD_TRAINING = """
import sys
import showtell.training.entry as entry
from showtell.cli import main

real_fit = entry.fit


def fit(*args, **kwargs):
    print("training", flush=True)
    sys.stdin.readline()
    return real_fit(*args, **kwargs)


entry.fit = fit
sys.exit(main(["--quiet", "train", "--data", sys.argv[1], "--out", sys.argv[2], *sys.argv[3:]]))
"""


@pytest.mark.timeout(300)
def test_two_trainings_into_one_new_folder_do_not_both_run(tmp_path, synth_dir, capsys):
    """A second training into the same new --out, started while the first is inside it (held at the
    start of its first epoch, after writing its config, so the order is certain and not a race), is
    refused naming the first and writes nothing; the first then finishes its run undisturbed."""
    out = tmp_path / "new"
    first = subprocess.Popen([sys.executable, "-c", _HELD_TRAINING, str(synth_dir / "dataset.json"), str(out), *TINY,
                              "--set", "train.epochs=1"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT / "src")})
    try:
        assert first.stdout.readline().strip() == "training", first.stderr.read()[-2000:]
        assert (out / "config.json").exists() and Run(out).never_trained()   # what a start over would take for free
        before = _snapshot(out)
        capsys.readouterr()
        assert _train(synth_dir, out) == 2
        err = capsys.readouterr().err
        assert f"in use by showtell train (pid {first.pid}" in err, err
        assert _snapshot(out) == before                                    # the second wrote nothing
        _, first_err = first.communicate("go on\n", timeout=240)
        assert first.returncode == 0, first_err[-2000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert Run(out).has_model() and [h["epoch"] for h in Run(out).history()] == [1]


def test_what_a_killed_write_left_is_cleaned_files_and_folders_alike(tmp_path):
    """A file half written (.NAME.XXXX.tmp) and a folder half replaced (fileio.replace_folder's
    .language_model.tmp and .language_model.old.tmp) are removed before a run is used again."""
    from showtell.fileio import replace_folder
    from showtell.run import Run

    run = tmp_path / "run"
    (run / ".language_model.tmp").mkdir(parents=True)
    (run / ".language_model.tmp" / "config.json").write_text("{}")
    (run / ".language_model.old.tmp").mkdir()
    (run / ".config.json.abc.tmp").write_text("half")
    Run(run).clean_temporary_files()
    assert sorted(p.name for p in run.iterdir()) == []
    replace_folder(run / "language_model", lambda staged: (staged / "a").write_text("1"))
    replace_folder(run / "language_model", lambda staged: (staged / "b").write_text("2"))
    assert sorted(p.name for p in run.iterdir()) == ["language_model"]
    assert sorted(p.name for p in (run / "language_model").iterdir()) == ["b"]
