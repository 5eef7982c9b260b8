"""`showtell`: parse the arguments, run the command, and the one place errors become a line.

A user's mistake ends in one line on standard error naming the problem and a non-zero exit
status (2 for bad input, 1 for images that could not be captioned or a failing system, 128 + N
for a signal), never a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

from ..errors import ShowtellError, Stopped
from .caption import cmd_caption, cmd_score
from .commands import cmd_config, cmd_demo, cmd_evaluate, cmd_export, cmd_prepare, cmd_serve, cmd_synth, cmd_train
from .parser import build_parser

log = logging.getLogger("showtell")

COMMANDS = {"synth": cmd_synth, "train": cmd_train, "caption": cmd_caption, "evaluate": cmd_evaluate,
            "prepare": cmd_prepare, "export": cmd_export, "serve": cmd_serve, "demo": cmd_demo,
            "config": cmd_config, "score": cmd_score}

# the commands that compute; main configures their thread policy, the one place a CLI process does
THREADED = ("train", "prepare", "caption", "evaluate", "serve", "score", "demo")

# what Ctrl-C means for each command: only training keeps checkpoints to continue from
INTERRUPTED = {"train": "interrupted; the last checkpoint is kept (continue with --resume)",
               "demo": "interrupted; the run keeps its last checkpoint (continue with showtell train --resume)",
               "prepare": "interrupted; the features encoded so far are kept (run the same prepare again to continue)",
               "evaluate": "interrupted; nothing was written (evaluate again to get the scores)"}


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = "showtell: warning: " if record.levelno >= logging.WARNING else "showtell: "
        return prefix + record.getMessage()


def setup_logging(quiet: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.quiet)
    try:
        if args.command in THREADED:       # train and prepare take theirs from train.threads (--threads overrides it)
            from ..device import configure_threads
            from .commands import thread_setting

            # a count is said only where it was chosen in a config (train, prepare) and differs from the default
            configure_threads(thread_setting(args), announce=args.command in ("train", "prepare"))
        return COMMANDS[args.command](args)
    except Stopped as stop:
        print(f"showtell: {stop}", file=sys.stderr)
        return stop.exit_code
    except ShowtellError as error:
        print(f"showtell: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"showtell: {INTERRUPTED.get(args.command, 'interrupted')}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as error:  # disk full, permission denied: the system's words, one line
        where = f"{error.filename}: " if error.filename else ""
        print(f"showtell: error: {where}{error.strerror or error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
