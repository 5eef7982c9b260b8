"""`showtell prepare`: run a frozen encoder over every picture once and keep its features.

The cache's format lives in data/features.py; this module is where pictures meet the model (it
lives with training, not data, because it runs the encoder: data knows files, not models).
Rows still to do are those not marked in done.npy, so an interrupted run continues with any
number of processes: under torchrun each rank takes every world-size-th of the remaining rows.
A row is marked done only after its features are flushed to disk.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..architectures import decoder as decoder_traits
from ..config import Config
from ..data.batching import ImageSet, make_loader
from ..data.features import FORMAT, encoder_settings, open_for_writing, record_dict
from ..data.formats import ImageRecord
from ..device import check_threads, resolve_device
from ..errors import DataError
from ..fileio import atomic_write_text
from ..models.encoder import Encoder
from ..progress import progress_bar
from ..tokenizer import make_tokenizer
from . import distributed as dist

log = logging.getLogger("showtell")


def prepare(records: list[ImageRecord], config: Config, out: str | Path, batch_size: int = 32,
            sources: list[str] | None = None, show_progress: bool = True) -> Path:
    """Encode every record's picture into DATA_DIR (continuing an interrupted run)."""
    out = Path(out)
    if not config.model.freeze_encoder:
        raise DataError("prepare caches the features of a frozen encoder; set model.freeze_encoder=true")
    device = resolve_device(config.train.device)
    encoder, outputs = _open_cache(records, config, out, sources, device)
    done = np.load(out / "done.npy", mmap_mode="r+")
    mine = np.flatnonzero(done == 0)[dist.rank()::dist.world_size()].tolist()
    dist.barrier()  # every rank has read the mask before any rank marks a row
    images = ImageSet(records, encoder.transform, config.data.max_image_pixels)
    batches = [mine[i:i + batch_size] for i in range(0, len(mine), batch_size)]
    loader = make_loader(images, batches, config.data.num_workers, pin_memory=device.type == "cuda")
    bar = progress_bar(total=len(records), initial=len(records) - int((done == 0).sum()), desc="encoding", unit="img",
                       disable=not show_progress or not dist.is_main())
    started = time.monotonic()
    with bar:
        _encode_rows(loader, encoder, device, out, outputs, done, bar)
    dist.barrier()
    if dist.is_main():
        bad = _finish(out, len(records))
        rate = len(mine) * dist.world_size() / max(time.monotonic() - started, 1e-9)
        log.info("encoded %d pictures (%.1f images/s); %d unreadable ones left out", len(records), rate, len(bad))
    dist.barrier()
    return out


def _open_cache(records, config: Config, out: Path, sources, device):
    """The frozen encoder, and the cache in `out` created (or checked to be this one, to continue)."""
    outputs = list(decoder_traits(config.model.decoder).features)     # what the decoder reads
    manifest = {"format": FORMAT, "encoder": encoder_settings(config), "outputs": outputs,
                "records": [record_dict(r) for r in records], "sources": sources or []}
    encoder = Encoder(config.model.encoder, config.model.encoder_weights, config.data.image_size).to(device)
    encoder.freeze(True)
    shapes = {"global": (len(records), encoder.global_dim), "grid": (len(records), encoder.grid_size, encoder.grid_dim)}
    manifest["shapes"] = {k: list(shapes[k]) for k in outputs}
    if dist.is_main():
        vocab = make_tokenizer(config, (t for r in records if r.split == "train" for t in r.tokens))
        open_for_writing(out, manifest, shapes, vocab, encoder.state_dict())
    dist.barrier()
    return encoder, outputs


def _encode_rows(loader, encoder, device, out: Path, outputs: list[str], done, bar) -> None:
    """Encode this rank's rows batch by batch; a row is marked done only once its features are on disk."""
    progress_path = out / f"progress-{dist.rank()}.json"
    progress = json.loads(progress_path.read_text()) if progress_path.exists() else {"done": 0, "bad": {}}
    arrays = {name: np.load(out / f"{name}.npy", mmap_mode="r+") for name in outputs}
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
            for array in arrays.values():
                array.flush()  # the rows reach the disk first, then the promise that they did
            atomic_write_text(progress_path, json.dumps({**progress, "done": progress["done"] + len(ids) + len(bad)}))
            progress["done"] += len(ids) + len(bad)
            done[[*ids.tolist(), *(index for index, _ in bad)]] = 1
            done.flush()
            bar.update((len(ids) + len(bad)) * dist.world_size())
            check_threads()


def _finish(out: Path, count: int) -> dict:
    """complete.json, written last once every row is done; returns the unreadable pictures."""
    if not np.all(np.load(out / "done.npy")):
        raise DataError(f"{out}: some rows were not encoded; run the same showtell prepare again")
    bad = {}
    for path in sorted(out.glob("progress-*.json")):
        bad.update(json.loads(path.read_text())["bad"])
    atomic_write_text(out / "complete.json", json.dumps({"images": count, "bad": bad}) + "\n")
    return bad
