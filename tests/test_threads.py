"""The thread policy: 'auto' uses the cores other processes leave free and follows their load; a
count is kept; OMP_NUM_THREADS is the user's choice; bad values are one line."""

from __future__ import annotations

import pytest
import torch

from showtell import device
from showtell.cli import main


class Machine:
    """/proc/stat's busy seconds and this process's CPU seconds, as a test sets them."""

    def __init__(self):
        self.busy, self.own = 0.0, 0.0

    def run(self, seconds: float, others: float, own: float = 1.0) -> None:
        """`seconds` pass with `others` cores busy with other processes and `own` with this one."""
        self.busy += seconds * (others + own)
        self.own += seconds * own


@pytest.fixture
def machine(monkeypatch):
    m = Machine()
    clock = [1000.0]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(device, "_busy_seconds", lambda: m.busy)
    monkeypatch.setattr(device, "_own_seconds", lambda: m.own)
    monkeypatch.setattr(device.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(device.time, "sleep", lambda s: (clock.__setitem__(0, clock[0] + s), m.run(s, m.others)))
    monkeypatch.setattr(device.os, "cpu_count", lambda: 2)
    m.clock, m.others = clock, 0.0
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield m
    torch.set_num_threads(before)
    device._policy = None


def _advance(m: Machine, seconds: float, others: float) -> None:
    m.clock[0] += seconds
    m.run(seconds, others)


def test_auto_uses_the_free_cores_and_follows_the_load(machine, capsys):
    from showtell.cli.main import setup_logging

    setup_logging()
    machine.others = 1.0                                   # a busy process beside us from the start
    assert device.configure_threads("auto") == 1 and torch.get_num_threads() == 1
    assert "using 1 CPU thread (other processes keep 1.0 of 2 cores busy)" in capsys.readouterr().err
    _advance(machine, 5.0, others=0.0)                     # it ends, but too recently to look again
    device.check_threads()
    assert torch.get_num_threads() == 1
    _advance(machine, 6.0, others=0.0)
    device.check_threads()
    assert torch.get_num_threads() == 2 and "using 2 CPU threads from now on" in capsys.readouterr().err
    _advance(machine, 11.0, others=1.0)                    # another one starts
    device.check_threads()
    assert torch.get_num_threads() == 1


def test_a_count_is_kept_and_omp_num_threads_is_respected(machine, monkeypatch):
    machine.others = 1.0
    assert device.configure_threads("2") == 2
    _advance(machine, 20.0, others=1.0)
    device.check_threads()
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert device.configure_threads("auto") == 2


@pytest.mark.parametrize("value", ["0", "lots", "300"])
def test_bad_thread_counts_are_one_line(value, capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        main(["caption", str(tmp_path), "x.png", "--threads", value])
    assert stopped.value.code == 2
    assert "--threads: expected 'auto' or a number of threads" in capsys.readouterr().err
    from showtell.config import load_config
    from showtell.errors import ConfigError

    with pytest.raises(ConfigError, match="train.threads"):
        load_config(None, [f"train.threads={value}"])
