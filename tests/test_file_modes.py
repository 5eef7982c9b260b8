"""Files showtell writes get the mode an ordinary write gives them, so a run can be shared."""

from __future__ import annotations

import os
import stat

import pytest

from showtell.fileio import atomic_write_text


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "x")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    assert mode(tmp_path / "new.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~umask  # was 0o600


def test_rewriting_a_file_keeps_its_mode(tmp_path):
    target = tmp_path / "config.json"
    target.write_text("{}")
    os.chmod(target, 0o640)
    atomic_write_text(target, '{"a": 1}')
    assert mode(target) == 0o640 and target.read_text() == '{"a": 1}'


def test_a_trained_run_is_readable_by_others_under_umask_022(trained_run):
    # the session fixture trains under the test process's umask
    umask = os.umask(0)
    os.umask(umask)
    files = [p for p in trained_run.rglob("*") if p.is_file()]
    assert files
    assert {p.name: mode(p) for p in files} == {p.name: 0o666 & ~umask for p in files}
