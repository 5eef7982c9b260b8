"""The GPU benchmark script runs end to end (on the CPU, at a tiny fraction of COCO's size)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_smoke_run_reports_seconds_per_epoch():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--scale", "0.001", "--device", "cpu",
                           "--max-steps", "1", "--warmup", "0", "--val-images", "8", "--precision", "fp32", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["images"] == 123 and summary["captions"] == 414
    for name in ("nic", "attention"):
        assert summary[f"{name}_fp32_epoch_s"] > 0 and summary[f"{name}_fp32_decode_beam3_val_s"] > 0
