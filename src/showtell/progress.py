"""Progress bars on standard error (tqdm): frequent on a terminal, every 15 s in a log file."""

from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(total: int | None = None, desc: str = "", unit: str = "it", disable: bool = False, **kwargs) -> tqdm:
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable, dynamic_ncols=True,
                mininterval=0.5 if interactive else 15.0, leave=kwargs.pop("leave", interactive), **kwargs)
