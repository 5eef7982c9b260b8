"""The feature cache: a frozen encoder's outputs, computed once by `showtell prepare`.

    DATA_DIR/manifest.json        encoder settings, outputs, shapes, and every record (captions, split)
    DATA_DIR/vocab.json           the vocabulary of the training captions
    DATA_DIR/encoder.safetensors  the encoder weights that made the features (they go into the model)
    DATA_DIR/global.npy           (N, Dg) float16, memory-mapped
    DATA_DIR/grid.npy             (N, L, Dc) float16, memory-mapped (attention decoders only)
    DATA_DIR/progress-R.json      how far rank R has got (written after its rows are on disk)
    DATA_DIR/complete.json        written last: the cache is whole; unreadable pictures listed

`prepare` writes rows in order and records progress only after they are flushed, so a killed run
continues where it stopped and never leaves rows marked done that are not. A cache without
complete.json is refused for training. Under torchrun each rank encodes its share of the rows.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .. import distributed as dist
from ..config import Config
from ..errors import DataError
from ..fileio import atomic_write_text, load_weights, save_weights
from ..progress import progress_bar
from ..vocab import Vocabulary
from .batching import ImageSet, make_loader
from .formats import ImageRecord

log = logging.getLogger("showtell")
FORMAT = "showtell-features-1"


def _encoder_settings(config: Config) -> dict:
    return {"encoder": config.model.encoder, "encoder_weights": config.model.encoder_weights,
            "image_size": config.data.image_size}


def _record_dict(r: ImageRecord) -> dict:
    return {"key": r.key, "path": str(r.path), "split": r.split, "captions": r.captions, "tokens": r.tokens}


def _shard(n: int) -> list[int]:
    return list(range(dist.rank(), n, dist.world_size()))


def prepare(records: list[ImageRecord], config: Config, out: str | Path, batch_size: int = 32,
            sources: list[str] | None = None, show_progress: bool = True) -> Path:
    """Encode every record's picture into DATA_DIR (resuming an interrupted run)."""
    from ..models.encoder import Encoder

    out = Path(out)
    if not config.model.freeze_encoder:
        raise DataError("prepare caches the features of a frozen encoder; set model.freeze_encoder=true")
    outputs = ["global", "grid"] if config.model.decoder == "attention" else ["global"]
    manifest = {"format": FORMAT, "encoder": _encoder_settings(config), "outputs": outputs,
                "records": [_record_dict(r) for r in records], "sources": sources or []}
    device = torch.device("cuda", dist.local_rank()) if torch.cuda.is_available() else torch.device("cpu")
    encoder = Encoder(config.model.encoder, config.model.encoder_weights, config.data.image_size).to(device)
    encoder.freeze(True)
    shapes = {"global": (len(records), encoder.global_dim), "grid": (len(records), encoder.grid_size, encoder.grid_dim)}
    manifest["shapes"] = {k: list(shapes[k]) for k in outputs}

    if dist.is_main():
        existing = out / "manifest.json"
        if existing.exists():
            old = json.loads(existing.read_text(encoding="utf-8"))
            if {k: old.get(k) for k in ("encoder", "outputs", "records", "shapes")} != \
                    {k: manifest[k] for k in ("encoder", "outputs", "records", "shapes")}:
                raise DataError(f"{out}: holds features of another dataset or encoder; choose another --out")
            log.info("continuing the interrupted feature cache in %s", out)
        else:
            out.mkdir(parents=True, exist_ok=True)
            train_tokens = (t for r in records if r.split == "train" for t in r.tokens)
            Vocabulary.build(train_tokens, config.data.min_word_count).save(out / "vocab.json")
            save_weights(out / "encoder.safetensors", encoder.state_dict(), {"format": FORMAT})
            for name in outputs:
                np.lib.format.open_memmap(out / f"{name}.npy", mode="w+", dtype=np.float16, shape=shapes[name]).flush()
            atomic_write_text(out / "manifest.json", json.dumps(manifest) + "\n")
    dist.barrier()

    progress_path = out / f"progress-{dist.rank()}.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {"done": 0, "bad": {}}
    mine = _shard(len(records))
    todo = mine[progress["done"]:]
    arrays = {name: np.load(out / f"{name}.npy", mmap_mode="r+") for name in outputs}
    images = ImageSet(records, encoder.transform, config.data.max_image_pixels)
    batches = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    loader = make_loader(images, batches, config.data.num_workers, pin_memory=device.type == "cuda")
    bar = progress_bar(total=len(mine), initial=len(mine) - len(todo), desc="encoding", unit="img",
                       disable=not show_progress or not dist.is_main())
    started = time.monotonic()
    with torch.inference_mode():
        for ids, batch, bad in loader:
            for index, message in bad:
                progress["bad"][str(index)] = message
                log.warning("skipping %s", message)
            if batch is not None:
                feats = encoder(batch.to(device))
                rows = ids.numpy()
                for name in outputs:
                    arrays[name][rows] = feats[name].to(torch.float16).cpu().numpy()
            progress["done"] += len(ids) + len(bad)
            bar.update(len(ids) + len(bad))
            for array in arrays.values():
                array.flush()  # the rows reach the disk first, then the promise that they did
            atomic_write_text(progress_path, json.dumps(progress))
    bar.close()
    dist.barrier()
    if dist.is_main():
        bad = {}
        for r in range(dist.world_size()):
            bad.update(json.loads((out / f"progress-{r}.json").read_text())["bad"])
        atomic_write_text(out / "complete.json", json.dumps({"images": len(records), "bad": bad}) + "\n")
        rate = (len(todo)) / max(time.monotonic() - started, 1e-9)
        log.info("encoded %d pictures (%.1f images/s); %d unreadable ones left out", len(records), rate, len(bad))
    dist.barrier()
    return out


class FeatureSet(Dataset):
    """Cached features of some rows, as the training loop's image sets yield pictures."""

    def __init__(self, cache: "FeatureCache", rows: list[int]):
        self.cache, self.rows = cache, rows
        self.records = [cache.all_records[r] for r in rows]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int):
        row = self.rows[index]
        return index, {name: torch.from_numpy(np.asarray(array[row], dtype=np.float32))
                       for name, array in self.cache.arrays.items()}, None


class FeatureCache:
    def __init__(self, path: Path, manifest: dict, bad: dict):
        self.path, self.manifest = path, manifest
        self.arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in manifest["outputs"]}
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
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            complete = json.loads((path / "complete.json").read_text(encoding="utf-8"))
        except ValueError:
            raise DataError(f"{path}: damaged feature cache (unreadable manifest)") from None
        if manifest.get("format") != FORMAT:
            raise DataError(f"{path}: feature cache of an unknown format")
        return cls(path, manifest, complete.get("bad", {}))

    def adapt(self, config: Config) -> Config:
        """The config with the cache's encoder (frozen), which training from the cache implies."""
        settings = self.manifest["encoder"]
        model = replace(config.model, encoder=settings["encoder"], encoder_weights=settings["encoder_weights"],
                        freeze_encoder=True)
        if model.encoder != config.model.encoder:
            log.info("using the feature cache's encoder %s", model.encoder)
        if config.model.decoder == "attention" and "grid" not in self.manifest["outputs"]:
            raise DataError(f"{self.path}: this cache has no spatial features; prepare it with model.decoder=attention")
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

    def encoder_state(self) -> dict[str, torch.Tensor]:
        return load_weights(self.path / "encoder.safetensors")
