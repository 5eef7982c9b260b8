"""The feature cache: prepare, interrupt and resume, and training from it equals training from pictures."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import preset_encoder, save_preset_encoder
from safetensors.torch import save_file

from showtell.config import load_config
from showtell.data.features import FeatureCache
from showtell.data.formats import read_annotations
from showtell.errors import DataError
from showtell.fileio import load_weights
from showtell.models.encoder import Encoder
from showtell.training.entry import train
from showtell.training.prepare import prepare


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory):
    """A 'pretrained' small encoder saved to a file, as an offline user would have it."""
    torch.manual_seed(11)
    path = tmp_path_factory.mktemp("weights") / "small.safetensors"
    save_preset_encoder(path)
    return path


def _config(weights, *more):
    return load_config("synth", [f"model.encoder_weights={weights}", "model.freeze_encoder=true", "data.image_size=32",
                                 "model.hidden_dim=32", "model.embed_dim=16", "train.epochs=2", "train.batch_size=16",
                                 "train.val_max_images=8", *more])


def test_prepare_writes_the_frozen_encoders_features(tmp_path, synth_dir, small_weights):
    records = read_annotations(str(synth_dir / "dataset.json"), None)
    config = _config(small_weights)
    out = prepare(records, config, tmp_path / "cache", batch_size=16, show_progress=False)
    for name in ("manifest.json", "vocab.json", "encoder.safetensors", "global.npy", "complete.json"):
        assert (out / name).is_file(), name
    features = np.load(out / "global.npy")
    assert features.dtype == np.float16 and features.shape[0] == len(records)
    encoder = Encoder(preset_encoder(), str(small_weights), 32)
    encoder.freeze(True)
    from showtell.data.images import load_tensor

    with torch.no_grad():
        direct = encoder(load_tensor(records[5].path, encoder.transform).unsqueeze(0))["global"][0]
    assert torch.equal(torch.from_numpy(features[5].astype(np.float32)), direct)
    cache = FeatureCache.open(out)
    assert len(cache.records()) == len(records) and not (out / "grid.npy").exists()


def test_an_interrupted_prepare_resumes_to_an_identical_cache(tmp_path, synth_dir):
    torch.manual_seed(3)
    weights = tmp_path / "r18.safetensors"
    import torchvision

    save_file({k: v.contiguous() for k, v in torchvision.models.resnet18().state_dict().items()}, str(weights))
    args = [sys.executable, "-m", "showtell", "--quiet", "prepare", "--data", str(synth_dir / "dataset.json"),
            "--batch-size", "1", "--set", "model.encoder=resnet18", "--set", f"model.encoder_weights={weights}",
            "--set", "data.image_size=96"]
    subprocess.run(args + ["--out", str(tmp_path / "whole")], check=True, capture_output=True, timeout=300)

    interrupted = tmp_path / "interrupted"
    process = subprocess.Popen(args + ["--out", str(interrupted)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = interrupted / "progress-0.json"
    deadline = time.monotonic() + 600  # a wait limit, not a speed requirement: a busy machine is slow to start
    while time.monotonic() < deadline:
        if progress.exists() and json.loads(progress.read_text())["done"] >= 10:
            break
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    done = json.loads(progress.read_text())["done"]
    assert 10 <= done < 80 and not (interrupted / "complete.json").exists()
    with pytest.raises(DataError, match="incomplete; run the same showtell prepare again"):
        FeatureCache.open(interrupted)
    subprocess.run(args + ["--out", str(interrupted)], check=True, capture_output=True, timeout=300)
    assert (interrupted / "global.npy").read_bytes() == (tmp_path / "whole" / "global.npy").read_bytes()
    assert json.loads((interrupted / "complete.json").read_text()) == json.loads((tmp_path / "whole" / "complete.json").read_text())


def test_training_from_the_cache_equals_training_from_pictures(tmp_path, synth_dir, small_weights):
    records = read_annotations(str(synth_dir / "dataset.json"), None)
    config = _config(small_weights)
    prepare(records, config, tmp_path / "cache", show_progress=False)
    cache = FeatureCache.open(tmp_path / "cache")
    train(cache.adapt(config), cache.records(), tmp_path / "cached", show_progress=False, features=cache)
    train(config, read_annotations(str(synth_dir / "dataset.json"), None), tmp_path / "pictures", show_progress=False)
    a, b = load_weights(tmp_path / "cached" / "model.safetensors"), load_weights(tmp_path / "pictures" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    history = [json.loads(x) for x in (tmp_path / "cached" / "history.jsonl").read_text().splitlines()]
    again = [json.loads(x) for x in (tmp_path / "pictures" / "history.jsonl").read_text().splitlines()]
    assert [h["val_CIDEr"] for h in history] == [h["val_CIDEr"] for h in again]


def test_cache_from_another_dataset_is_not_mixed(tmp_path, synth_dir, small_weights):
    records = read_annotations(str(synth_dir / "dataset.json"), None)
    prepare(records[:20], _config(small_weights), tmp_path / "cache", show_progress=False)
    with pytest.raises(DataError, match="holds features of another dataset or encoder"):
        prepare(records, _config(small_weights), tmp_path / "cache", show_progress=False)
    with pytest.raises(DataError, match="frozen encoder"):
        prepare(records, _config(small_weights, "model.freeze_encoder=false"), tmp_path / "other", show_progress=False)


def test_cli_train_and_evaluate_from_the_cache(tmp_path, synth_dir, small_weights):
    from conftest import run_cli

    common = ["--config", "synth", "--set", f"model.encoder_weights={small_weights}", "--set", "model.freeze_encoder=true",
              "--set", "data.image_size=32", "--set", "model.hidden_dim=32", "--set", "train.epochs=1"]
    done = run_cli("prepare", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "cache"), *common)
    assert done.returncode == 0, done.stderr
    done = run_cli("train", "--features", str(tmp_path / "cache"), "--out", str(tmp_path / "run"), *common)
    assert done.returncode == 0, done.stderr
    from_cache = run_cli("evaluate", str(tmp_path / "run"), "--features", str(tmp_path / "cache"), "--json")
    from_pictures = run_cli("evaluate", str(tmp_path / "run"), "--data", str(synth_dir / "dataset.json"), "--json")
    assert from_cache.returncode == 0 and from_pictures.returncode == 0, from_cache.stderr + from_pictures.stderr
    a, b = json.loads(from_cache.stdout), json.loads(from_pictures.stdout)
    for key in ("Bleu_4", "CIDEr", "METEOR", "perplexity"):
        assert a[key] == pytest.approx(b[key], abs=1e-6), key


def test_finetuning_unfreezes_the_encoder_and_leaves_the_cache(tmp_path, synth_dir, small_weights, caplog):
    import logging

    records = read_annotations(str(synth_dir / "dataset.json"), None)
    config = _config(small_weights, "train.finetune_encoder_after=1", "train.encoder_lr=0.001")
    prepare(records, config, tmp_path / "cache", show_progress=False)
    cache = FeatureCache.open(tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="showtell"):
        train(cache.adapt(config), cache.records(), tmp_path / "run", show_progress=False, features=cache)
    assert "fine-tuning the encoder from epoch 2" in caplog.text
    # the newest checkpoint, not model.safetensors: the best epoch may be the frozen first one
    trained = load_weights(max((tmp_path / "run" / "checkpoints").glob("step-*.safetensors")))
    start = load_weights(small_weights)
    moved = [k for k in start if k.startswith("trunk") and k.endswith("weight") and
             not torch.equal(trained[f"encoder.{k}"], start[k])]
    assert moved, "the encoder did not change during fine-tuning"
