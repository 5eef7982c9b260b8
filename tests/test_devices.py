"""A bad device is reported under the name the user typed it as."""

from __future__ import annotations

import pytest
import torch

from showtell.cli import main
from showtell.device import resolve_device
from showtell.errors import ConfigError

NO_GPU = "cuda:0" if not torch.cuda.is_available() else None


@pytest.mark.parametrize("argv", [["caption", "no-run", "x.jpg"], ["evaluate", "no-run"], ["serve", "no-run"]])
@pytest.mark.parametrize("device", ["gpu", NO_GPU])
def test_commands_name_their_device_option(argv, device, capsys):
    if device is None:
        pytest.skip("a CUDA GPU is present")
    assert main(argv + ["--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith("showtell: error: --device: ") and "train.device" not in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_training_still_says_train_device():
    with pytest.raises(ConfigError, match=r"^train\.device: unknown device 'gpu'"):
        resolve_device("gpu")
