"""Crash-safe file writing and pickle-free model files.

Every file is written to a temporary name in the same folder, flushed, fsync'ed and renamed over
the target, so a kill at any moment leaves either the old file or the new one, never half of one.
The file gets the mode an ordinary write would give it: an existing file's mode, or 0666 less
the umask (the temporary file itself is private until then).
Model weights are safetensors; training state is loaded with `torch.load(weights_only=True)`,
which refuses anything but tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import RunError

# torch and safetensors are imported where weights are read or written, so that the vocabulary
# and config readers (and with them the ONNX runtime) work without torch installed


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


_umask_lock = threading.Lock()


def _umask() -> int:
    """The process umask (reading it means setting it; the lock keeps threads from seeing 0)."""
    with _umask_lock:
        mask = os.umask(0o077)
        os.umask(mask)
    return mask


def _ordinary_mode(path: Path) -> int:
    """The mode `open(path, 'w')` would leave: the existing file's, or 0666 less the umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)` so that it appears whole or not at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _ordinary_mode(path))  # mkstemp makes 0600: others could not read a shared run
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value) -> Path:
    """`value` as indented JSON (UTF-8, not ASCII-escaped) in `path`, written atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")
    return path


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(path: str | Path, state_dict: dict, metadata: dict[str, str] | None = None) -> None:
    """Model weights as safetensors (tensors made contiguous and unshared first)."""
    from safetensors.torch import save as safetensors_save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write_bytes(path, safetensors_save(tensors, metadata=metadata))


def load_weights(path: str | Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load as safetensors_load

    path = Path(path)
    try:
        return safetensors_load(path.read_bytes())
    except FileNotFoundError:
        raise RunError(f"{path}: weights file not found") from None
    except (OSError, SafetensorError, ValueError) as error:
        raise RunError(f"{path}: not a readable safetensors file ({str(error).splitlines()[0][:120]})") from None


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Training state (optimizer, RNG, counters): tensors and plain containers only."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(path: str | Path) -> dict[str, Any]:
    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: training state not found") from None
    except Exception as error:  # torch raises many kinds for a corrupt or hostile file
        raise RunError(f"{path}: unreadable training state ({error.__class__.__name__})") from None
