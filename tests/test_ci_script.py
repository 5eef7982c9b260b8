""".ci/run installs what the Java and browser tests need, and runs the tests with CI set."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_ci_installs_java_and_chromium_when_absent_and_runs_make_test_under_ci(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"
    for tool in ("id", "dirname"):  # the only real tools the script needs; no java, no chromium
        os.symlink(shutil.which(tool), bin_dir / tool)
    for fake in ("apt-get", "make", "npm"):
        (bin_dir / fake).write_text(f'#!/bin/sh\necho "{fake} $* CI=$CI" >> {log}\n')
        (bin_dir / fake).chmod(0o755)
    (bin_dir / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (bin_dir / "sudo").chmod(0o755)
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path)}
    done = subprocess.run(["/bin/sh", str(ROOT / ".ci" / "run")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert any(c.startswith("apt-get install") and "default-jre-headless" in c for c in calls), calls
    assert any(c.startswith("apt-get install") and "chromium" in c for c in calls), calls
    npm = [i for i, c in enumerate(calls) if c.startswith("npm ci")]   # onnxruntime-web from web/'s lock file
    assert npm and npm[0] < len(calls) - 1, calls
    assert calls[-1] == "make test CI=true"
