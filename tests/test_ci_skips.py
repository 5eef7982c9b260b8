"""Under CI a skip is a failure unless its reason is on conftest's short list: an optional extra that
did not install must fail the run, not leave skip lines in a green one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

CASES = '''
import pytest

def test_needs_a_missing_extra():
    pytest.importorskip("showtell_no_such_extra")

@pytest.mark.skipif(True, reason="no Chromium found")
def test_marked_skip():
    pass

def test_allowed():
    pytest.skip("a CUDA GPU is present")

@pytest.mark.xfail(reason="expected")
def test_expected_failure():
    assert False
'''

MODULE_LEVEL = '''
import pytest
pytest.importorskip("showtell_no_such_extra")

def test_never_collected():
    pass
'''


def _pytest(folder: Path, ci: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "no:randomly",
                           str(folder)], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def folder(tmp_path) -> Path:
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_cases.py").write_text(CASES)
    return tmp_path


def test_a_skip_fails_under_ci_unless_it_is_on_the_list(folder):
    done = _pytest(folder, "true")
    out = done.stdout
    assert done.returncode == 1, out
    refused = [line.split()[1] for line in out.splitlines() if line.startswith(("FAILED", "ERROR"))]
    # a skip in the test's body fails it; a skip mark acts in set-up, so pytest calls it an error
    assert sorted(refused) == ["test_cases.py::test_marked_skip", "test_cases.py::test_needs_a_missing_extra"], out
    assert "SKIPPED" in out and "a CUDA GPU is present" in out, out   # the listed reason still skips
    assert "XFAIL" in out, out                                         # an expected failure is not a skip


def test_a_module_that_skips_fails_collection_under_ci(folder):
    (folder / "test_cases.py").write_text(MODULE_LEVEL)
    done = _pytest(folder, "true")
    assert done.returncode != 0 and "showtell_no_such_extra" in done.stdout, done.stdout


def test_outside_ci_a_skip_is_a_skip(folder):
    done = _pytest(folder, "")
    assert done.returncode == 0, done.stdout
    assert "3 skipped" in done.stdout, done.stdout
