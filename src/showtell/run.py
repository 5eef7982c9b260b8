"""The run directory: a trained model package plus everything needed to resume its training.

    RUN/config.json          the fully resolved config (JSON, never pickle)
    RUN/vocab.json           the vocabulary
    RUN/model.safetensors    weights of the best checkpoint (what `caption`, `serve`, `evaluate` use)
    RUN/data.json            where the training data came from (so --resume needs nothing else)
    RUN/history.jsonl        one line of losses and validation scores per evaluation
    RUN/checkpoints/         the last K resumable checkpoints: step-N.safetensors + step-N.state.pt
    RUN/training.json        time and steps of every training session   (written by the model card's module)
    RUN/README.md            the model card
    RUN/report.html          `evaluate`'s report, with its pictures in RUN/report_files/
    RUN/evaluations/         `evaluate`'s kept scores and captions, one file per split and decoding
    RUN/.lock, .lock.json    the run's lock and who holds it

No output option (`--results`, `--coco-results`) may name one of these (`Run.owns`): a results
file written over model.safetensors would destroy the model it came from.

Every file is written atomically. A checkpoint's state file records the SHA-256 of its weights
file, so a damaged checkpoint is detected and resume falls back to the previous good one.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import Config, config_from_dict
from .errors import RunError
from .fileio import FILE_LIMITS, atomic_write_text, load_state, load_weights, read_bounded, save_state, save_weights, sha256_file
from .vocab import Vocabulary

log = logging.getLogger("showtell")

FORMAT = "showtell-run-1"
PACKAGE_FILES = ("config.json", "vocab.json", "model.safetensors")
CHECKPOINT_SUFFIXES = {"weights": ".safetensors", "state": ".state.pt"}
LOCK, HOLDER = ".lock", ".lock.json"     # the run's lock, and who holds it
CARD, TRAINING = "README.md", "training.json"
ENTRIES = (*PACKAGE_FILES, "data.json", "history.jsonl", "checkpoints", TRAINING, CARD, "report.html", "report_files",
           "evaluations", LOCK, HOLDER)   # every entry of a run folder (the module docstring says what each is)


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # --- creation and the lock -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: Config, vocab: Vocabulary, sources: dict[str, Any]) -> "Run":
        """Write a new run's config, vocabulary and data sources; call it holding the run's lock. A
        folder that holds a run is refused, except one where training never reached its first
        checkpoint (stopped by a full disk, say): there is nothing to lose, so it starts over."""
        run = cls(path)
        if (run.path / "config.json").exists():
            if not run.never_trained():
                raise RunError(f"{run.path}: already holds a run; use --resume {run.path} to continue it or choose "
                               "another --out")
            log.info("%s holds a run that stopped before its first checkpoint; starting it over", run.path)
            run.clean_temporary_files()
        atomic_write_text(run.path / "config.json", config.to_json())
        vocab.save(run.path / "vocab.json")
        atomic_write_text(run.path / "data.json", json.dumps(sources, indent=2) + "\n")
        return run

    def never_trained(self) -> bool:
        """Nothing of this run was ever kept: no checkpoint, no model, no history."""
        return not (self.checkpoints() or self.has_model() or (self.path / "history.jsonl").exists())

    @contextmanager
    def locked(self, command: str, create: bool = False):
        """Hold the run's exclusive lock while `command` works on it (filelock on RUN/.lock, which the
        system releases when the holder exits or is killed, so a stale lock never blocks). A second
        process gets a RunError naming the holder, recorded in RUN/.lock.json."""
        from filelock import FileLock, Timeout

        if self.path.exists() and not self.path.is_dir():
            raise RunError(f"{self.path}: exists and is not a folder")
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
        elif not self.path.is_dir():
            raise RunError(f"{self.path}: run directory not found")
        lock = FileLock(str(self.path / LOCK), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise RunError(f"{self.path}: in use by {self.holder()}; wait for it to finish or stop it") from None
        try:
            try:
                atomic_write_text(self.path / HOLDER, json.dumps({
                    "command": command, "pid": os.getpid(), "host": socket.gethostname(),
                    "since": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n")
            except OSError:   # a full disk: the lock holds all the same, only its note is missing
                pass
            yield self
        finally:
            (self.path / HOLDER).unlink(missing_ok=True)   # still holding the lock: no one else writes it
            lock.release()

    def holder(self) -> str:
        """Who holds the lock, as RUN/.lock.json says."""
        try:
            who = json.loads((self.path / HOLDER).read_text(encoding="utf-8"))
            return f"showtell {who['command']} (pid {who['pid']} on {who['host']}, since {who['since']})"
        except (OSError, ValueError, KeyError, TypeError):
            return "another showtell process"

    def owns(self, path: str | Path) -> bool:
        """Whether `path` is one of this run's own files (or inside one of its folders), also through
        a symlink or as a hard link: an output there would replace what the run is made of."""
        try:
            root, target = self.path.resolve(), Path(path).resolve()
        except (OSError, RuntimeError):   # a symlink loop: not a file of ours
            return False
        if target.is_relative_to(root) and target != root and target.relative_to(root).parts[0] in ENTRIES:
            return True
        try:
            found = os.stat(target)
        except OSError:
            return False
        return any(os.path.exists(root / name) and os.path.samestat(found, os.stat(root / name))
                   for name in ENTRIES)

    # --- reading -------------------------------------------------------------------------------
    def need(self, name: str) -> Path:
        path = self.path / name
        if not path.is_file():
            if not self.path.is_dir():
                raise RunError(f"{self.path}: run directory not found")
            raise RunError(f"{self.path}: not a showtell run (missing {name})")
        return path

    def config(self) -> Config:
        path = self.need("config.json")
        try:
            tree = json.loads(read_bounded(path, FILE_LIMITS["config"], "a run's config", RunError))
        except (OSError, ValueError) as error:
            raise RunError(f"{path}: unreadable config ({error.__class__.__name__})") from None
        except RecursionError:
            raise RunError(f"{path}: unreadable config (values nested too deeply)") from None
        return config_from_dict(tree, str(path))

    def vocab(self) -> Vocabulary:
        return Vocabulary.load(self.need("vocab.json"))

    def sources(self) -> dict[str, Any]:
        """Where the training data came from (data.json)."""
        path = self.need("data.json")
        try:
            sources = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RunError(f"{path}: damaged ({error.__class__.__name__}); it says where the training data is: "
                           "give --data (and --images) again") from None
        if not isinstance(sources, dict):
            raise RunError(f"{path}: damaged (not an object); give --data (and --images) again")
        return sources

    def weights(self) -> dict:
        return load_weights(self.need("model.safetensors"))

    def has_model(self) -> bool:
        return (self.path / "model.safetensors").is_file()

    def model_is_readable(self) -> bool:
        try:
            return self.has_model() and bool(self.weights())
        except RunError:
            return False

    # --- best model ----------------------------------------------------------------------------
    def save_model(self, model, metadata: dict[str, Any]) -> None:
        save_weights(self.path / "model.safetensors", model.state_dict(),
                     {"format": FORMAT, **{k: str(v) for k, v in metadata.items()}})

    # --- history -------------------------------------------------------------------------------
    def append_history(self, record: dict[str, Any]) -> None:
        lines = self.history()
        lines.append(record)
        atomic_write_text(self.path / "history.jsonl", "".join(json.dumps(r) + "\n" for r in lines))

    def history(self) -> list[dict[str, Any]]:
        """One dict per validated epoch. A last line cut off by a crash is dropped with a warning (its
        epoch is validated again on resume); a damaged line before it is a RunError."""
        return read_history(self.path / "history.jsonl")

    def rewrite_history(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / "history.jsonl", "".join(json.dumps(r) + "\n" for r in records))

    def clean_temporary_files(self) -> None:
        """Remove what an atomic write killed half-way left behind (.NAME.XXXX.tmp)."""
        for folder in (self.path, self.checkpoint_dir):
            for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
                stale.unlink(missing_ok=True)

    # --- resumable checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_file(self, step: int, kind: str) -> Path:
        """The checkpoint file of `step`: kind 'weights' (step-N.safetensors) or 'state' (step-N.state.pt)."""
        return self.checkpoint_dir / f"step-{step:09d}{CHECKPOINT_SUFFIXES[kind]}"

    def checkpoints(self) -> list[int]:
        if not self.checkpoint_dir.is_dir():
            return []
        steps = []
        suffix = CHECKPOINT_SUFFIXES["state"]
        for p in self.checkpoint_dir.glob(f"step-*{suffix}"):
            try:
                steps.append(int(p.name[len("step-"):-len(suffix)]))
            except ValueError:
                continue
        return sorted(steps)

    def save_checkpoint(self, step: int, model, state: dict[str, Any], keep: int) -> None:
        """Weights first, then the state that vouches for them: a kill in between leaves a
        weights file without state, which is ignored."""
        weights = self.checkpoint_file(step, "weights")
        save_weights(weights, model.state_dict(), {"format": FORMAT, "step": str(step)})
        save_state(self.checkpoint_file(step, "state"), {**state, "weights_sha256": sha256_file(weights)})
        for old in self.checkpoints()[:-keep]:
            for kind in ("state", "weights"):
                self.checkpoint_file(old, kind).unlink(missing_ok=True)

    def load_checkpoint(self) -> tuple[int, dict, dict[str, Any]]:
        """The newest checkpoint that reads back whole; damaged newer ones are skipped with a warning."""
        steps = self.checkpoints()
        if not steps:
            raise RunError(f"{self.path}: no resumable checkpoint (training stopped before its first one); start it "
                           f"over with showtell train --out {self.path} and the same settings")
        for step in reversed(steps):
            weights_path = self.checkpoint_file(step, "weights")
            try:
                state = load_state(self.checkpoint_file(step, "state"))
                if not weights_path.is_file() or sha256_file(weights_path) != state.get("weights_sha256"):
                    raise RunError(f"{weights_path}: missing or does not match its state file")
                return step, load_weights(weights_path), state
            except RunError as error:
                log.warning("checkpoint at step %d is damaged (%s); trying the previous one", step, error)
        raise RunError(f"{self.path}: every checkpoint is damaged; cannot resume")


def read_history(path: Path) -> list[dict[str, Any]]:
    """history.jsonl read tolerantly (see Run.history); also for model cards of exported folders."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as error:
        raise RunError(f"{path}: unreadable ({error.__class__.__name__})") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            if number == len(lines):
                log.warning("%s: its last line is cut off (a crash while writing it?); dropped", path)
                break
            raise RunError(f"{path}: line {number} is damaged; remove it (or restore the file)") from None
        records.append(record)
    return records
