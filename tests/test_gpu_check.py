"""benchmarks/gpu_check.py, the end-to-end check to run on a GPU, runs on the CPU at tiny sizes: every
stage through the CLI succeeds and reports itself, so the script cannot rot between GPU runs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

STAGES = ["synth", "prepare resnet features", "train NIC from the cache",
          "train attention end to end, encoder fine-tuned", "resume attention",
          "train transformer end to end, encoder fine-tuned", "resume transformer",
          "torchrun --nproc_per_node=1 (NCCL on GPU, gloo on CPU)", "evaluate beam 3", "caption 16 pictures beam 3",
          "score 2 captions", "serve one upload", "export --onnx and caption with onnxruntime"]


@pytest.mark.slow
def test_the_gpu_check_runs_every_stage_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=900)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    stages, summary = lines[:-1], lines[-1]
    assert [s["stage"] for s in stages] == STAGES, done.stdout[-3000:] + done.stderr[-3000:]
    assert summary["summary"] and summary["failed"] == [], [s for s in stages if s["error"]]
    assert done.returncode == 0
    assert all(s["seconds"] > 0 for s in stages)
    trained = [s for s in stages if s["stage"].startswith(("train", "resume", "torchrun"))]
    assert all(s["steps"] > 0 and s["caption_samples_per_s"] > 0 for s in trained)
    assert stages[1]["images_per_s"] > 0 and stages[9]["captions_per_s"] > 0
