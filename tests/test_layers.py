"""The layering of the code (pyproject.toml's import contracts), checked with import-linter; its
lint settings, checked with ruff; and the top of the package kept to the few shared basics."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

BASICS = {"__init__.py", "__main__.py", "architectures.py", "config.py", "device.py", "errors.py", "fileio.py", "progress.py", "run.py",
          "tokenizer.py", "vocab.py"}


def _lint_imports() -> subprocess.CompletedProcess:
    program = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    return subprocess.run([program, str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contracts_hold():
    done = _lint_imports()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 8 kept, 0 broken" in done.stdout


def test_only_the_basics_live_at_the_top_of_the_package():
    top = {p.name for p in (ROOT / "src" / "showtell").glob("*.py")}
    assert top == BASICS
    for folder in ("data", "models", "decoding", "reporting", "training", "evaluation", "inference", "serve", "cli"):
        doc = (ROOT / "src" / "showtell" / folder / "__init__.py").read_text(encoding="utf-8")
        assert doc.startswith('"""') and "import" in doc.split('"""')[1], f"{folder}: say what it may import"


def test_the_code_keeps_its_own_lint_settings():
    """pyproject.toml's ruff settings (140 columns, import order, bugbear) over every Python file."""
    program = shutil.which("ruff", path=str(Path(sys.executable).parent)) or "ruff"
    done = subprocess.run([program, "check", "--no-cache", "src", "tests", "benchmarks", "scripts"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
