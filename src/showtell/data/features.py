"""The feature cache: a frozen encoder's outputs, computed once by `showtell prepare`.

    DATA_DIR/manifest.json        encoder settings, outputs, shapes, and every record (captions, split)
    DATA_DIR/vocab.json           the vocabulary of the training captions
    DATA_DIR/encoder.safetensors  the encoder weights that made the features (they go into the model)
    DATA_DIR/global.npy           (N, Dg) float16, memory-mapped
    DATA_DIR/grid.npy             (N, L, Dc) float16, memory-mapped (decoders that read the grid only)
    DATA_DIR/done.npy             (N,) uint8: 1 once a row's features are on disk
    DATA_DIR/progress-R.json      rows rank R has encoded, and the unreadable pictures it found
    DATA_DIR/complete.json        written last: the cache is whole; unreadable pictures listed

`prepare` (extract.py) marks a row done only after its features are flushed, so a killed run
continues where it stopped and never leaves rows marked done that are not, whatever number of
processes it continues with. A cache without complete.json is refused for training.

Reading: a `FeatureSet` opens the arrays in the process that reads them and never pickles them,
so DataLoader workers share the page cache instead of each copying the cache; a batch's rows are
read with positioned reads straight into one float16 tensor per array.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..architectures import decoder as decoder_traits
from ..config import Config
from ..errors import DataError
from ..fileio import FILE_LIMITS, atomic_write_text, load_weights, read_bounded, save_weights
from ..vocab import Vocabulary
from .formats import ImageRecord

log = logging.getLogger("showtell")
FORMAT = "showtell-features-2"


def encoder_settings(config: Config) -> dict:
    return {"encoder": config.model.encoder, "encoder_weights": config.model.encoder_weights,
            "image_size": config.data.image_size}


def record_dict(r: ImageRecord) -> dict:
    return {"key": r.key, "path": str(r.path), "split": r.split, "captions": r.captions, "tokens": r.tokens}


RECORD_FIELDS = {"key": str, "path": str, "split": str, "captions": list, "tokens": list}   # as record_dict writes
OUTPUTS = ("global", "grid")


def _read_json(path: Path):
    """A cache's JSON file, read bounded; DataError when it is not JSON (or nested absurdly deep)."""
    try:
        return json.loads(read_bounded(path, FILE_LIMITS["annotations"], f"a feature cache's {path.name}", DataError))
    except (ValueError, RecursionError) as error:
        raise DataError(f"{path}: damaged feature cache (not readable JSON: {error.__class__.__name__}); "
                        "make it again with showtell prepare") from None


def check_manifest(path: Path, manifest, complete) -> None:
    """The shape `open_for_writing` and `prepare` give a manifest (and complete.json), or one line
    naming what is missing; a hand-edited or truncated cache must not fail later with a KeyError."""
    def damaged(file: str, problem: str) -> DataError:
        return DataError(f"{path / file}: damaged feature cache {file[:-5]} ({problem}); make it again with showtell prepare")

    if not isinstance(manifest, dict):
        raise damaged("manifest.json", "not a JSON object")
    if manifest.get("format") != FORMAT:
        raise DataError(f"{path}: feature cache of an unknown format")
    encoder = manifest.get("encoder")
    if not isinstance(encoder, dict) or not {"encoder", "encoder_weights", "image_size"} <= encoder.keys():
        raise damaged("manifest.json", "'encoder' must give encoder, encoder_weights and image_size")
    outputs, shapes = manifest.get("outputs"), manifest.get("shapes")
    if not isinstance(outputs, list) or not outputs or not all(o in OUTPUTS for o in outputs):
        raise damaged("manifest.json", f"'outputs' must be a list of {' and '.join(OUTPUTS)}")
    if not isinstance(shapes, dict) or not all(
            isinstance(shapes.get(o), list) and all(isinstance(n, int) and n >= 0 for n in shapes[o]) for o in outputs):
        raise damaged("manifest.json", "'shapes' must give each output's shape")
    records = manifest.get("records")
    if not isinstance(records, list):
        raise damaged("manifest.json", "no 'records' list")
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not all(isinstance(record.get(k), t) for k, t in RECORD_FIELDS.items()):
            raise damaged("manifest.json", f"records[{i}] needs {', '.join(RECORD_FIELDS)}")
    bad = complete.get("bad", {}) if isinstance(complete, dict) else None
    if not isinstance(bad, dict) or not all(isinstance(k, str) and k.isdigit() for k in bad):
        raise damaged("complete.json", "'bad' must map the rows of unreadable pictures to messages")


def open_for_writing(out: Path, manifest: dict, shapes: dict[str, tuple], vocab: Vocabulary,
                     encoder_state: dict[str, torch.Tensor]) -> None:
    """Create an empty cache in `out`, or check that the one there is of the same data and
    encoder (then `prepare` continues it). Rank 0 only."""
    keys = ("encoder", "outputs", "records", "shapes")
    existing = out / "manifest.json"
    if existing.exists():
        old = _read_json(existing)
        if not isinstance(old, dict) or {k: old.get(k) for k in keys} != {k: manifest[k] for k in keys}:
            raise DataError(f"{out}: holds features of another dataset or encoder; choose another --out")
        if not (out / "done.npy").exists():
            raise DataError(f"{out}: feature cache from an older showtell (no done.npy); choose another --out")
        log.info("continuing the interrupted feature cache in %s", out)
        return
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab.json")
    save_weights(out / "encoder.safetensors", encoder_state, {"format": FORMAT})
    for name in manifest["outputs"]:
        np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.float16, shape=shapes[name]).flush()
    # one byte per row, set once the row's features are on disk: any number of processes, in any
    # later run with any other number of processes, can tell which rows are still to do
    np.lib.format.open_memmap(out / "done.npy", mode="w+", dtype=np.uint8, shape=(len(manifest["records"]),)).flush()
    atomic_write_text(out / "manifest.json", json.dumps(manifest) + "\n")


class RowReader:
    """Rows of a .npy array read with positioned reads straight into a new tensor, without a
    memory map: a DataLoader worker's resident memory then holds its batches, not every page of
    the cache it has touched (up to 25 GB of COCO grids). Opened in the process that reads."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            self.start = f.tell()
        if fortran or dtype != np.float16:
            raise DataError(f"{path}: not a feature array of this showtell (float16, C order)")
        self.row_shape, self.row_bytes = shape[1:], int(np.prod(shape[1:], dtype=np.int64)) * 2
        self.file = open(path, "rb", buffering=0)

    def read(self, rows: np.ndarray) -> torch.Tensor:
        """(len(rows), *row_shape) float16, in the order given; the file is read in row order."""
        out = torch.empty((len(rows), *self.row_shape), dtype=torch.float16)
        view, size = memoryview(out.numpy().reshape(-1).view(np.uint8)), self.row_bytes
        for slot in np.argsort(rows, kind="stable"):
            self.file.seek(self.start + int(rows[slot]) * size)
            if self.file.readinto(view[slot * size:(slot + 1) * size]) != size:
                raise DataError(f"{self.file.name}: feature cache is shorter than its manifest says")
        return out


class FeatureSet(Dataset):
    """Cached features of some rows, as the training loop's image sets yield pictures: float16,
    as stored (half the bytes to move from a worker); consumers convert them on their device."""

    def __init__(self, cache: "FeatureCache", rows: list[int]):
        self.path, self.outputs, self.rows = cache.path, list(cache.manifest["outputs"]), rows
        self.records = [cache.all_records[r] for r in rows]
        self._readers: dict[str, RowReader] | None = None
        self._reader_pid = 0

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_readers": None, "_reader_pid": 0}   # a worker opens the files itself

    @property
    def readers(self) -> dict[str, RowReader]:
        # a forked worker inherits the parent's open files; it needs its own (each has a position)
        if self._readers is None or self._reader_pid != os.getpid():
            self._readers = {name: RowReader(self.path / f"{name}.npy") for name in self.outputs}
            self._reader_pid = os.getpid()
        return self._readers

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """A whole batch: one tensor per output, read row by row in file order into batch order."""
        rows = np.asarray([self.rows[i] for i in indices], dtype=np.int64)
        block = {name: reader.read(rows) for name, reader in self.readers.items()}
        return [(index, {name: values[k] for name, values in block.items()}, None) for k, index in enumerate(indices)]


class FeatureCache:
    def __init__(self, path: Path, manifest: dict, bad: dict):
        self.path, self.manifest = path, manifest
        self.all_records = [ImageRecord(r["key"], Path(r["path"]), r["split"], r["captions"], r["tokens"])
                            for r in manifest["records"]]
        self.bad = {int(k) for k in bad}

    @classmethod
    def open(cls, path: str | Path, config: Config | None = None) -> "FeatureCache":
        path = Path(path)
        if not (path / "manifest.json").is_file():
            raise DataError(f"{path}: not a feature cache (no manifest.json); make one with showtell prepare")
        if not (path / "complete.json").is_file():
            raise DataError(f"{path}: feature cache is incomplete; run the same showtell prepare again to finish it")
        manifest = _read_json(path / "manifest.json")
        complete = _read_json(path / "complete.json")
        check_manifest(path, manifest, complete)
        return cls(path, manifest, complete.get("bad", {}))

    def adapt(self, config: Config) -> Config:
        """The config with the cache's encoder (frozen), which training from the cache implies."""
        settings = self.manifest["encoder"]
        model = replace(config.model, encoder=settings["encoder"], encoder_weights=settings["encoder_weights"],
                        freeze_encoder=True)
        if model.encoder != config.model.encoder:
            log.info("using the feature cache's encoder %s", model.encoder)
        if not set(decoder_traits(config.model.decoder).features) <= set(self.manifest["outputs"]):
            raise DataError(f"{self.path}: this cache has no spatial features; prepare it with model.decoder={config.model.decoder}")
        return replace(config, model=model, data=replace(config.data, image_size=settings["image_size"]))

    def records(self) -> list[ImageRecord]:
        """The cached records with readable pictures, each knowing its row."""
        kept = []
        for row, record in enumerate(self.all_records):
            if row not in self.bad:
                record.extra["row"] = row
                kept.append(record)
        return kept

    def split_set(self, records: list[ImageRecord], split: str = "") -> FeatureSet:
        return FeatureSet(self, [r.extra["row"] for r in records])

    def shape(self, output: str) -> tuple[int, ...]:
        return tuple(self.manifest["shapes"][output])

    def encoder_state(self) -> dict[str, torch.Tensor]:
        return load_weights(self.path / "encoder.safetensors")
