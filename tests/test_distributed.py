"""torchrun with two CPU processes (gloo) matches one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import free_port, save_preset_encoder

from showtell.fileio import load_weights


def one_and_two_processes(tmp_path, *args: str):
    """`showtell ARGS --out one` in one process and `--out two` under torchrun with two (gloo)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "showtell", *args, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "-m", "showtell", *args, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    return ddp


def random_small_encoder(tmp_path, seed: int):
    torch.manual_seed(seed)
    weights = tmp_path / "small.safetensors"
    save_preset_encoder(weights)
    return weights


@pytest.mark.slow
def test_two_processes_equal_one_and_only_rank_zero_writes(tmp_path, synth_dir):
    weights = random_small_encoder(tmp_path, 5)
    # a frozen encoder and no dropout: then the only difference is the order of floating-point sums
    common = ["train", "--data", str(synth_dir / "dataset.json"), "--config", "synth",
              "--set", f"model.encoder_weights={weights}", "--set", "model.freeze_encoder=true",
              "--set", "model.dropout=0", "--set", "data.image_size=32", "--set", "model.hidden_dim=64",
              "--set", "model.embed_dim=32", "--set", "train.epochs=2", "--set", "train.batch_size=16",
              "--set", "train.val_max_images=16", "--set", "train.checkpoint_every=3"]
    ddp = one_and_two_processes(tmp_path, *common)

    a, b = load_weights(tmp_path / "one" / "model.safetensors"), load_weights(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-4, f"largest weight difference {worst:g}"  # the stated tolerance
    kept = sorted((tmp_path / "two" / "checkpoints").glob("step-*.safetensors"))
    first, last = load_weights(kept[0]), load_weights(kept[-1])
    assert len(kept) > 1 and any(not torch.equal(first[k], last[k]) for k in first)  # training did happen

    # only rank 0 wrote: the same files as one process, one history line per epoch, one summary printed
    listing = lambda root: sorted(str(p.relative_to(root)) for p in root.rglob("*"))  # noqa: E731
    assert listing(tmp_path / "one") == listing(tmp_path / "two")
    assert len((tmp_path / "two" / "history.jsonl").read_text().splitlines()) == 2
    assert ddp.stdout.count("trained ") == 1


@pytest.mark.slow
def test_self_critical_training_under_torchrun_keeps_every_rank_on_the_same_weights(tmp_path, synth_dir):
    """Every rank starts the self-critical phase from the best cross-entropy model (only rank 0
    writes it; all read it) and the hand-averaged gradients keep them equal: training compares a
    checksum of the weights across ranks after every epoch and stops with an error if they differ."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["train", "--data", str(synth_dir / "dataset.json"), "--config", "synth", "--set", "data.image_size=32",
            "--set", "model.hidden_dim=32", "--set", "model.embed_dim=16", "--set", "train.epochs=2",
            "--set", "train.scst_epochs=1", "--set", "train.scst_samples=2", "--set", "train.batch_size=16",
            "--set", "train.val_max_images=8", "--set", "train.lr=0.02", "--out", str(tmp_path / "run")]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                          f"--master_port={free_port()}", "-m", "showtell", *args],
                         capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    history = [json.loads(x) for x in (tmp_path / "run" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["xe", "xe", "scst"]


@pytest.mark.slow
def test_feature_extraction_is_shared_between_ranks(tmp_path, synth_dir):
    import numpy as np

    weights = random_small_encoder(tmp_path, 6)
    common = ["prepare", "--data", str(synth_dir / "dataset.json"), "--config", "synth", "--set", "data.image_size=32",
              "--set", f"model.encoder_weights={weights}", "--set", "model.freeze_encoder=true"]
    ddp = one_and_two_processes(tmp_path, *common)
    assert ddp.stdout.count("features and vocabulary in") == 1
    # each rank encoded its own half of the pictures, and together they are the single-process cache
    done = [int(json.loads((tmp_path / "two" / f"progress-{r}.json").read_text())["done"]) for r in (0, 1)]
    assert done == [40, 40]
    one, two = np.load(tmp_path / "one" / "global.npy"), np.load(tmp_path / "two" / "global.npy")
    assert np.abs(one.astype(np.float32) - two.astype(np.float32)).max() <= 1e-2 and np.abs(two).sum() > 0

    # a kill of the two-process run leaves rows not marked done (their bytes anything): the same
    # command in ONE process finishes exactly those rows, and the cache equals the single-process one
    cache = tmp_path / "two"
    marks = np.load(cache / "done.npy", mmap_mode="r+")
    lost = np.arange(len(marks))[3::2]
    marks[lost] = 0
    marks.flush()
    for name in ("global", "grid"):
        if (cache / f"{name}.npy").exists():
            values = np.load(cache / f"{name}.npy", mmap_mode="r+")
            values[lost] = 7.0
            values.flush()
    (cache / "complete.json").unlink()
    resumed = subprocess.run([sys.executable, "-m", "showtell", *common, "--out", str(cache)],
                             capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "continuing the interrupted feature cache" in resumed.stderr + resumed.stdout
    again = np.load(cache / "global.npy")
    assert np.all(np.load(cache / "done.npy")) and (cache / "complete.json").exists()
    assert np.abs(one.astype(np.float32) - again.astype(np.float32)).max() <= 1e-2
    assert np.array_equal(again[~np.isin(np.arange(len(again)), lost)], two[~np.isin(np.arange(len(two)), lost)])
