"""benchmarks/gpu_check.py, the end-to-end check to run on a GPU, runs on the CPU at tiny sizes: every
stage through the CLI succeeds and reports itself, so the script cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT

STAGES = ["synth", "prepare resnet features", "train NIC from the cache",
          "train attention end to end, encoder fine-tuned", "resume attention",
          "train transformer end to end, encoder fine-tuned", "resume transformer",
          "torchrun --nproc_per_node=1 (NCCL on GPU, gloo on CPU)", "evaluate beam 3", "caption 16 pictures beam 3",
          "score 2 captions", "serve one upload", "export --onnx and caption with onnxruntime"]
LIMIT_SCALE = 5      # the stages' limits are sized for an H200; a loaded 2-core machine gets five times as long
PER_EPOCH = 6        # --tiny: 48 training pictures in batches of 8


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--limit-scale", str(LIMIT_SCALE), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=1400)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stages, summary = lines[:-1], lines[-1]
    assert [s["stage"] for s in stages] == STAGES, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["summary"] and summary["failed"] == [], [s for s in stages if s["error"]]
    assert done.returncode == 0
    # every stage ended by itself, inside its (scaled) limit; the summary adds up what the stages took
    assert all(0 < s["seconds"] < s["limit_s"] for s in stages), [(s["stage"], s["seconds"], s["limit_s"]) for s in stages]
    assert summary["stages"] == len(STAGES) and summary["seconds"] == pytest.approx(sum(s["seconds"] for s in stages), abs=0.2)
    by_name = {s["stage"]: s for s in stages}

    # prepare cached every picture; the rate is pictures over seconds
    prepare = by_name["prepare resnet features"]
    assert np.load(tmp_path / "features" / "global.npy", mmap_mode="r").shape[0] == 60
    assert prepare["images_per_s"] == pytest.approx(60 / prepare["seconds"], abs=0.1)

    # one epoch each for NIC and torchrun, validated once at its last step
    for name in ("train NIC from the cache", "torchrun --nproc_per_node=1 (NCCL on GPU, gloo on CPU)"):
        stage = by_name[name]
        assert (stage["steps"], stage["history"], stage["stopped_early"], stage["resumed_at"]) == \
            (PER_EPOCH, [[1, PER_EPOCH]], False, None), stage

    # the stop and the resume: a budget too short for a second step stops the first training after
    # step 1, before any validation; the resume logs that it continues at epoch 1, step 1, and does
    # the 11 steps left of two epochs (not 12 from the start), its history continuing the run's
    for decoder in ("attention", "transformer"):
        first, resumed = by_name[f"train {decoder} end to end, encoder fine-tuned"], by_name[f"resume {decoder}"]
        assert (first["steps"], first["stopped_early"], first["history"]) == (1, True, []), first
        assert resumed["resumed_at"] == [1, 1], resumed
        assert (resumed["steps"], resumed["stopped_early"]) == (2 * PER_EPOCH - 1, False), resumed
        assert resumed["history"] == [[1, PER_EPOCH], [2, 2 * PER_EPOCH]], resumed
        assert json.loads((tmp_path / decoder / "training.json").read_text())["sessions"] == 2

    trained = [s for s in stages if s["stage"].startswith(("train", "resume", "torchrun"))]
    for s in trained:   # caption samples a second: steps x batch 8 x 5 captions a picture, over the seconds
        assert s["caption_samples_per_s"] == pytest.approx(s["steps"] * 8 * 5 / s["seconds"], abs=0.1), s
    caption = by_name["caption 16 pictures beam 3"]
    assert caption["captions_per_s"] == pytest.approx(16 / caption["seconds"], abs=0.1)
