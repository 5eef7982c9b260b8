"""The run directory: a trained model package plus everything needed to resume its training.

    RUN/config.json          the fully resolved config (JSON, never pickle)
    RUN/vocab.json           the vocabulary (or, for a pretrained language model, the name of its tokenizer)
    RUN/language_model/      a prefix-LM run's copy of its language model's folder but the weights
    RUN/model.safetensors    weights of the best checkpoint (what `caption`, `serve`, `evaluate` use)
    RUN/data.json            where the training data came from (so --resume needs nothing else)
    RUN/history.jsonl        one line of losses and validation scores per evaluation
    RUN/checkpoints/         the last K resumable checkpoints: step-N.safetensors + step-N.state.pt
    RUN/model-xe.safetensors the best cross-entropy model, kept when self-critical training starts
    RUN/training.json        time and steps of every training session   (written by the model card's module)
    RUN/README.md            the model card
    RUN/report.html          `evaluate`'s report, with its pictures in RUN/report_files/
    RUN/evaluations/         `evaluate`'s kept scores and captions, one file per split and decoding
    RUN/.lock, .lock.json    the run's lock and who holds it

`Run` is the one place that names these: every other module asks it for a path (`run.card`,
`run.report`, `run.evaluation_file(...)`, ...) or a reader (`run.loose_json(...)`,
`run.kept_evaluations()`, ...). No output option (`--results`, `--coco-results`) may name one of
them (`Run.owns`): a results file written over model.safetensors would destroy the model it came from.

Every file is written atomically. A checkpoint's state file records the SHA-256 of its weights
file, so a damaged checkpoint is detected and resume falls back to the previous good one.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .architectures import decoder as decoder_traits
from .config import Config, config_from_dict
from .errors import RunError
from .fileio import FILE_LIMITS, atomic_write_text, load_state, load_weights, read_bounded, save_state, save_weights, sha256_file
from .tokenizer import LM_COPY, lm_copy, load_tokenizer
from .vocab import Vocabulary

log = logging.getLogger("showtell")

FORMAT = "showtell-run-1"
CONFIG, VOCAB, MODEL = "config.json", "vocab.json", "model.safetensors"
PACKAGE_FILES = (CONFIG, VOCAB, MODEL)   # what `export` copies: a model others can load
DATA, HISTORY, CHECKPOINTS, XE_MODEL = "data.json", "history.jsonl", "checkpoints", "model-xe.safetensors"
CHECKPOINT_SUFFIXES = {"weights": ".safetensors", "state": ".state.pt"}
LOCK, HOLDER = ".lock", ".lock.json"     # the run's lock, and who holds it
CARD, TRAINING = "README.md", "training.json"
REPORT, REPORT_FILES, EVALUATIONS = "report.html", "report_files", "evaluations"
ENTRIES = (*PACKAGE_FILES, LM_COPY, DATA, HISTORY, CHECKPOINTS, XE_MODEL, TRAINING, CARD, REPORT, REPORT_FILES,
           EVALUATIONS, LOCK, HOLDER)   # every entry of a run folder (the module docstring says what each is)


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:   # its folder, in messages
        return str(self.path)

    @classmethod
    def of(cls, run: "Run | str | Path") -> "Run":
        """`run` itself if it is a Run already (opened once, passed down), else the run at that path."""
        return run if isinstance(run, Run) else cls(run)

    # --- the paths of its entries (the module docstring says what each is) ------------------------
    @property
    def card(self) -> Path:
        return self.path / CARD

    @property
    def training_record(self) -> Path:
        return self.path / TRAINING

    @property
    def model_file(self) -> Path:
        return self.path / MODEL

    @property
    def xe_model_file(self) -> Path:
        return self.path / XE_MODEL

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def report_files(self) -> Path:
        """The report's pictures; report.html names them relative to itself, under this name."""
        return self.path / REPORT_FILES

    @property
    def evaluations_dir(self) -> Path:
        return self.path / EVALUATIONS

    def evaluation_file(self, split: str, decoding: str) -> Path:
        """Where `evaluate` keeps the scores and captions of `split` decoded as `decoding`."""
        return self.evaluations_dir / f"{split}-{decoding}.json"

    # --- creation and the lock -------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, config: Config, vocab: Vocabulary, sources: dict[str, Any]) -> "Run":
        """Write a new run's config, vocabulary and data sources; call it holding the run's lock. A
        folder that holds a run is refused, except one where training never reached its first
        checkpoint (stopped by a full disk, say): there is nothing to lose, so it starts over."""
        run = cls(path)
        if (run.path / CONFIG).exists():
            if not run.never_trained():
                raise RunError(f"{run.path}: already holds a run; use --resume {run.path} to continue it or choose "
                               "another --out")
            log.info("%s holds a run that stopped before its first checkpoint; starting it over", run.path)
            run.clean_temporary_files()
        run.save_config(config)
        vocab.save(run.path / VOCAB)
        atomic_write_text(run.path / DATA, json.dumps(sources, indent=2) + "\n")
        return run

    def save_config(self, config: Config) -> None:
        """Write the run's config.json: at its creation, and again when a resume changes a setting
        (keeping the language model it was trained from, not the run's own copy `config()` reads)."""
        own = lm_copy(self.path)
        if own is not None and getattr(config.model, "language_model", None) == str(own.resolve()):
            saved = json.loads(read_bounded(self.need(CONFIG), FILE_LIMITS["config"], "a run's config", RunError))
            config = copy.deepcopy(config)
            config.model.language_model = saved["model"]["language_model"]
        atomic_write_text(self.path / CONFIG, config.to_json())

    def never_trained(self) -> bool:
        """Nothing of this run was ever kept: no checkpoint, no model, no history."""
        return not (self.checkpoints() or self.has_model() or (self.path / HISTORY).exists())

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
        path = self.need(CONFIG)
        try:
            tree = json.loads(read_bounded(path, FILE_LIMITS["config"], "a run's config", RunError))
        except (OSError, ValueError) as error:
            raise RunError(f"{path}: unreadable config ({error.__class__.__name__})") from None
        except RecursionError:
            raise RunError(f"{path}: unreadable config (values nested too deeply)") from None
        config = config_from_dict(tree, str(path))
        own = lm_copy(self.path)
        if own is not None and decoder_traits(config.model.decoder).lm_tokenizer:
            config.model.language_model = str(own.resolve())   # built from its own copy: the LM folder may be gone
        return config

    def vocab(self) -> Vocabulary:
        return load_tokenizer(self.need(VOCAB))

    def sources(self) -> dict[str, Any]:
        """Where the training data came from (data.json)."""
        path = self.need(DATA)
        try:
            sources = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise RunError(f"{path}: damaged ({error.__class__.__name__}); it says where the training data is: "
                           "give --data (and --images) again") from None
        if not isinstance(sources, dict):
            raise RunError(f"{path}: damaged (not an object); give --data (and --images) again")
        return sources

    def has_sources(self) -> bool:
        return (self.path / DATA).exists()

    def weights(self) -> dict:
        return load_weights(self.need(MODEL))

    def has_model(self) -> bool:
        return self.model_file.is_file()

    def model_is_readable(self) -> bool:
        try:
            return self.has_model() and bool(self.weights())
        except RunError:
            return False

    def describe_mismatch(self, model, state: dict, error: RuntimeError) -> str:
        """Which file disagrees with which when weights (`state`) do not load into `model`: the
        vocabulary size is the usual culprit (another run's vocab.json), named with both numbers;
        otherwise the first tensor that differs, or torch's first line."""
        own = model.state_dict()
        for name, tensor in state.items():     # a prefix-LM run whose language model folder was replaced
            if name.startswith("decoder.lm.") and name in own and own[name].shape != tensor.shape:
                where = self.config().model.language_model
                return (f"{Path(where) / CONFIG}: does not describe the language model in {MODEL} (model.language_model "
                        f"of this run): {name} has shape {tuple(own[name].shape)} there but {tuple(tensor.shape)} in {MODEL}")
        vocabulary = len(self.vocab())
        for name in ("decoder.output.weight", "decoder.embed.weight"):
            if name in state and state[name].shape[0] != vocabulary:
                return (f"{self.path / VOCAB}: has {vocabulary} words but {MODEL} was trained with "
                        f"{state[name].shape[0]}; the folder mixes files of different runs")
        for name, tensor in state.items():
            if name in own and tuple(own[name].shape) != tuple(tensor.shape):
                return (f"{self.model_file}: {name} has shape {tuple(tensor.shape)} but {CONFIG} "
                        f"describes {tuple(own[name].shape)}")
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            return (f"{self.model_file}: does not match {CONFIG} (missing {missing[:2]}, "
                    f"unexpected {unexpected[:2]})")
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error).splitlines()[0])
        return f"{self.model_file}: weights do not match {CONFIG} ({first[:160]})"

    # --- best model ----------------------------------------------------------------------------
    def save_model(self, model, metadata: dict[str, Any]) -> None:
        save_weights(self.model_file, model.state_dict(),
                     {"format": FORMAT, **{k: str(v) for k, v in metadata.items()}})

    def keep_xe_model(self) -> None:
        """Copy the best cross-entropy model to model-xe.safetensors (self-critical training then
        replaces model.safetensors with its own best)."""
        shutil.copyfile(self.model_file, self.xe_model_file)

    # --- what the model card is made of: read tolerantly (a missing or damaged file is `default`) ----
    def loose_json(self, name: str, default: Any = None) -> Any:
        """The JSON file `name` of the run (CONFIG, VOCAB, DATA, TRAINING), or `default` when it is
        missing or unreadable: the card shows what there is."""
        try:
            return json.loads((self.path / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return default

    def write_training_record(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.training_record, json.dumps(record, indent=2) + "\n")

    def kept_evaluations(self) -> list[Any]:
        """Every kept evaluation (evaluations/*.json) by file name, each None if unreadable."""
        folder = self.evaluations_dir
        return [self.loose_json(f"{EVALUATIONS}/{p.name}") for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []

    # --- history -------------------------------------------------------------------------------
    def append_history(self, record: dict[str, Any]) -> None:
        lines = self.history()
        lines.append(record)
        atomic_write_text(self.path / HISTORY, "".join(json.dumps(r) + "\n" for r in lines))

    def history(self) -> list[dict[str, Any]]:
        """One dict per validated epoch. A last line cut off by a crash is dropped with a warning (its
        epoch is validated again on resume); a damaged line before it is a RunError."""
        return read_history(self.path / HISTORY)

    def rewrite_history(self, records: list[dict[str, Any]]) -> None:
        atomic_write_text(self.path / HISTORY, "".join(json.dumps(r) + "\n" for r in records))

    def clean_temporary_files(self) -> None:
        """Remove what an atomic write killed half-way left behind (.NAME.XXXX.tmp)."""
        for folder in (self.path, self.checkpoint_dir):
            for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
                if stale.is_dir() and not stale.is_symlink():     # a folder being replaced (fileio.replace_folder)
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)

    # --- resumable checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

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
