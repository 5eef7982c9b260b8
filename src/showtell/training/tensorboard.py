"""Live training curves: `train.log=tensorboard` writes TensorBoard events to RUN/tensorboard.

    pip install 'showtell[tensorboard]'
    tensorboard --logdir RUN/tensorboard

Per update: `step/loss` (the batch's loss per word, or the self-critical phase's greedy CIDEr-D)
and `step/lr`, at the update's index (0 for the first). Per epoch, at the step it ended on, every
number of its history.jsonl line under the same name with the first `_` made a `/`
(`train/loss`, `train/perplexity`, `val/CIDEr`, `val/Bleu_4`, `val/distinct_captions`...; the
learning rate as `train/lr`) and the kept validation captions as text (`val/samples`). Only rank 0
writes. A resumed run starts a writer with `purge_step` at its checkpoint's step, which hides what
the interrupted run wrote after it, then writes again the history lines it kept from there on: the
curves never double. history.jsonl stays the record either way.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

FOLDER = "tensorboard"
NOT_SCALARS = {"epoch", "step", "phase", "best", "val_samples", "val_images"}


def check_available(config) -> None:
    """A one-line error, before anything is written, when train.log asks for a missing package."""
    if config.train.log != "tensorboard":
        return
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError("train.log=tensorboard: the tensorboard package is not installed "
                          "(pip install 'showtell[tensorboard]')") from None


def tag_of(key: str) -> str:
    return "train/lr" if key == "lr" else key.replace("_", "/", 1)


def scalars_of(record: dict) -> dict[str, float]:
    """{tag: value} of a history line's numbers."""
    return {tag_of(k): float(v) for k, v in record.items()
            if k not in NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def samples_markdown(samples: list[dict]) -> str:
    rows = ["| picture | caption | a reference |", "| --- | --- | --- |"]
    rows += [f"| {s['file']} | {s['caption']} | {s['reference']} |" for s in samples]
    return "\n".join(rows)


class TensorBoardLog:
    def __init__(self, folder: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=purge_step, flush_secs=10)

    def update(self, index: int, value: float, lr: float) -> None:
        self.writer.add_scalar("step/loss", value, index)
        self.writer.add_scalar("step/lr", lr, index)

    def epoch(self, record: dict) -> None:
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        if record.get("val_samples"):
            self.writer.add_text("val/samples", samples_markdown(record["val_samples"]), record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_log(config, run, step: int, main_process: bool) -> TensorBoardLog | None:
    """The run's writer (rank 0, with train.log=tensorboard), continuing from training step `step`."""
    if config.train.log != "tensorboard" or run is None or not main_process:
        return None
    log = TensorBoardLog(run.path / FOLDER, purge_step=step if step > 0 else None)
    for record in run.history():          # lines kept by the resume but hidden by the purge
        if record.get("step", 0) >= step > 0:
            log.epoch(record)
    return log
