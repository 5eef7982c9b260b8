"""User-facing errors.

Anything a user can cause (a missing file, a bad setting, a malformed annotation) raises a
`ShowtellError` whose message is one line naming the file or setting and the problem. The CLI
prints that line and exits non-zero; the library never prints a traceback for such mistakes.
"""

from __future__ import annotations


class ShowtellError(Exception):
    """A problem the user can fix; `str(error)` is the whole message."""

    exit_code = 2


class ConfigError(ShowtellError):
    """An unknown setting, a value of the wrong type or out of range."""


class ArgumentError(ConfigError, ValueError):
    """A bad argument to a command, the Python API or the service (also a ValueError); `str(error)`
    names the argument as the caller spelt it (`--beam-size`, `beam_size`) and the problem."""


class DataError(ShowtellError):
    """A malformed or missing annotation file, image folder or dataset record."""


class ImageError(ShowtellError):
    """One image that cannot be used. `kind` says why, for callers that map it to a status:
    'missing', 'empty', 'format' (not an image), 'corrupt' (truncated, broken) or 'too_large'."""

    def __init__(self, path: str, reason: str, kind: str = "corrupt"):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind


class RunError(ShowtellError):
    """A run directory or model package that is missing, incomplete or corrupt."""


class WeightsError(ShowtellError):
    """Pretrained weights that cannot be found, downloaded or loaded."""


class Stopped(ShowtellError):
    """Training stopped on a signal (SIGINT, SIGTERM) after saving a checkpoint; the exit status
    is the shell's 128 + signal number."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum
