"""The `showtell` command: argument parsing (parser.py), one function per command (commands.py,
with caption and score in caption.py), the demo (demo.py) and the one place errors become a line
and an exit status (main.py). Only parses, calls the library and prints.

May import every other part of showtell; nothing imports it.
"""

from .main import main

__all__ = ["main"]
