"""Crash-safe file writing and pickle-free model files.

Every file is written to a temporary name in the same folder, flushed, fsync'ed and renamed over
the target, so a kill at any moment leaves either the old file or the new one, never half of one.
Only a regular file, a symlink to one, or nothing is renamed over: a device or a FIFO (also behind a
symlink) is written into, as the shell's `>` does, so `--results /dev/stdout` works and no device
file is replaced.
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
import shutil
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from .errors import RunError, ShowtellError

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


def written_in_place(path: str | Path) -> bool:
    """Whether `path` is written into, as `open(path, 'w')` would, rather than renamed over: a
    character device (a terminal, /dev/null, /dev/full) or a FIFO, also through a symlink (as
    /dev/stdout names the terminal or pipe; the link is kept). Renamed over, a device file would be
    replaced (as root) and a pipe's reader would wait forever. A regular file, a symlink to one
    (the link is replaced, never the file it names, which may be shared: a hub cache's blob), or
    nothing gets the atomic rename. A socket or block device is refused in one line; a folder, as
    the system refuses it."""
    try:
        mode = os.stat(path).st_mode
    except OSError:   # nothing there, or a link to nothing: the atomic write makes the file
        return False
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return True
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return False
    kind = "socket" if stat.S_ISSOCK(mode) else "block device" if stat.S_ISBLK(mode) else "special file"
    raise ShowtellError(f"{path}: is a {kind}, not a file; give the name of a file to write")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)` so that it appears whole or not at all (a device or a
    FIFO, also behind a symlink, is written into instead: see `written_in_place`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if written_in_place(path):
        with open(path, "wb") as f:
            write(f)
            f.flush()
            try:
                os.fsync(f.fileno())
            except OSError:   # a pipe or a terminal: nothing to make durable
                pass
        return
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


def replace_folder(target: str | Path, fill: Callable[[Path], None]) -> None:
    """Make folder `target` anew: `fill` writes into a staging folder (.NAME.tmp), which then takes
    the old one's place; the old is set aside first (.NAME.old.tmp), so a crash never leaves no folder.
    Leftovers match a run's `.*.tmp` cleaning."""
    target = Path(target)
    staged, old = target.with_name(f".{target.name}.tmp"), target.with_name(f".{target.name}.old.tmp")
    for stale in (staged, old):
        shutil.rmtree(stale, ignore_errors=True)
    staged.mkdir()
    fill(staged)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value) -> Path:
    """`value` as indented JSON (UTF-8, not ASCII-escaped) in `path`, written atomically."""
    path = Path(path)
    atomic_write_text(path, json.dumps(value, ensure_ascii=False, indent=1) + "\n")
    return path


def shown(name: str) -> str:
    """A file name as text any terminal or strict UTF-8 stream can take, as `ls` shows it: a name
    that is not valid UTF-8 with its bytes escaped (`caf\\xe9.png`), and one holding a tab, a line
    break or another control character (or starting with a quote) as a JSON string, so that no
    name adds a line or a terminal escape to an output."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        name = os.fsencode(name).decode("utf-8", "backslashreplace")
    if name.startswith('"') or any(ord(c) < 32 or ord(c) == 127 for c in name):
        return json.dumps(name, ensure_ascii=False)
    return name


def shown_in(message: str, name: str) -> str:
    """A one-line message that begins with file name `name` ('NAME: why'), the name as `shown` writes it."""
    return shown(name) + message[len(name):] if message.startswith(name + ": ") else message


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


# --- bounded reading ------------------------------------------------------------------------------------
# The most bytes showtell reads from one file of each kind before parsing it; beyond, the file is
# refused in one line. A regular file is refused by its size before a byte is read; a device or a
# pipe, whose size cannot be known (/dev/zero), is read up to the limit and refused when more comes.
FILE_LIMITS = {
    "config": 1 << 20,          # a YAML config, a run's config.json: a few kB in practice
    "annotations": 1 << 30,     # COCO/Karpathy JSON, CSV, JSON Lines, a feature cache's manifest (dataset_coco.json
                                # is 0.13 GB); give a larger dataset as several --data files
    "vocabulary": 64 << 20,     # a run's vocab.json (COCO's is about 0.1 MB)
    "image": 512 << 20,         # one picture file (an RGB TIFF of the default data.max_image_pixels is 0.27 GB)
}


def _size_text(count: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if count >= 1 << shift:
            return f"{count / (1 << shift):.3g} {unit}"
    return f"{count} bytes"


def read_bounded(path: str | Path, limit: int, what: str, error: Callable[[str], Exception] = RunError) -> bytes:
    """The bytes of `path` if it holds at most `limit` of them; otherwise raises
    `error("PATH: larger than the LIMIT limit for WHAT")` having read at most limit + 1 bytes (none
    of a regular file, whose size says it first). Other OSErrors (missing, a folder) pass through."""
    path = Path(path)
    too_large = lambda size: error(f"{path}: {size} is larger than the {_size_text(limit)} limit for {what}")  # noqa: E731
    with open(path, "rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode):
            if info.st_size > limit:
                raise too_large(_size_text(info.st_size))
            data = f.read(min(info.st_size, limit) + 1)   # one more: a file that grew is still bounded
            if len(data) > limit:
                raise too_large("the file")
            return data
        data = bytearray()
        while block := f.read(min(1 << 20, limit + 1 - len(data))):
            data += block
            if len(data) > limit:
                raise too_large("its content")
        return bytes(data)
