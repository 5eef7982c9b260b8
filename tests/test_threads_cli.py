"""`--threads 1` is what runs, command by command: the CLI hands the setting to the thread policy,
and the loops that run long (training steps, prepare's batches, the Captioner's decoding) look at
the policy as they go. conftest pins OMP_NUM_THREADS for the suite; these tests unset it, so the
setting alone decides."""

from __future__ import annotations

import pytest
import torch
from conftest import save_preset_encoder

from showtell import device
from showtell.cli import main


class Recorded:
    settings: list = []      # what each policy was made with
    checks: list = []        # PyTorch's thread count at each check() during the work


@pytest.fixture
def recorded(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    Recorded.settings, Recorded.checks = [], []

    class RecordingPolicy(device.ThreadPolicy):
        def __init__(self, setting="auto"):
            Recorded.settings.append(str(setting))
            super().__init__(setting)

        def check(self):
            Recorded.checks.append(torch.get_num_threads())
            super().check()

    monkeypatch.setattr(device, "ThreadPolicy", RecordingPolicy)
    monkeypatch.setattr(device, "_policy", None)
    before = torch.get_num_threads()
    torch.set_num_threads(2)                       # what a 2-core machine's PyTorch uses unless told
    yield Recorded
    torch.set_num_threads(before)


def _ran_on_one_thread(r) -> None:
    assert r.settings and set(r.settings) == {"1"}, r.settings
    assert r.checks, "the work never looked at the thread policy (check_threads)"
    assert set(r.checks) == {1}, r.checks
    assert torch.get_num_threads() == 1


def test_train(recorded, tmp_path, synth_dir, tiny_config_args):
    args = [*tiny_config_args, "--set", "train.epochs=1"]
    assert main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "run"),
                 *args, "--threads", "1"]) == 0
    _ran_on_one_thread(recorded)


def test_prepare(recorded, tmp_path, synth_dir):
    weights = tmp_path / "small.safetensors"
    save_preset_encoder(weights)
    assert main(["--quiet", "prepare", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "cache"),
                 "--config", "synth", "--set", f"model.encoder_weights={weights}", "--set", "data.image_size=32",
                 "--set", "model.freeze_encoder=true",
                 "--batch-size", "16", "--threads", "1"]) == 0
    _ran_on_one_thread(recorded)


@pytest.mark.parametrize("command", ["caption", "evaluate", "score"])
def test_captioning_commands(recorded, command, trained_run, synth_dir, tmp_path):
    picture = str(sorted((synth_dir / "images").iterdir())[0])
    args = {"caption": [picture], "score": [picture, "a red circle"],
            "evaluate": ["--data", str(synth_dir / "dataset.json"), "--max-images", "4",
                         "--results", str(tmp_path / "results.json")]}[command]
    assert main(["--quiet", command, str(trained_run), *args, "--threads", "1"]) == 0
    if command == "score":        # scoring is one teacher-forced pass: it sets the threads and has no loop to check
        assert recorded.settings == ["1"] and torch.get_num_threads() == 1
    else:
        _ran_on_one_thread(recorded)


def test_serve(recorded, trained_run, synth_dir, monkeypatch):
    """`showtell serve --threads 1`: main configures the policy (as for every command), and the
    batcher, which does the service's decoding, looks at it before each batch. The server itself is
    stood in for by a test client on the same app."""
    from fastapi.testclient import TestClient

    from showtell.inference.captioner import Captioner
    from showtell.serve import server
    from showtell.serve.app import create_app

    picture = sorted((synth_dir / "images").iterdir())[0]
    answers = []

    def serve_two_requests(run, *args, **kwargs):
        app = create_app(Captioner.load(run), max_wait_ms=1.0)
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for _ in range(2):
                answers.append(client.post("/v1/captions", files={"images": (picture.name, picture.read_bytes(), "image/png")}))

    monkeypatch.setattr(server, "serve", serve_two_requests)
    assert main(["--quiet", "serve", str(trained_run), "--threads", "1"]) == 0
    assert [a.status_code for a in answers] == [200, 200], answers[0].text
    assert len(recorded.checks) >= 2, recorded.checks
    _ran_on_one_thread(recorded)
