"""Feature extraction (`showtell prepare`: JPEG files -> decode -> resize/crop -> ResNet-50 -> float16
cache) against the encoder's pure forward pass on tensors already in memory, and both against the
machine's FLOP limit measured in the same run; then the forward pass of a timm and a CLIP encoder
(random weights, 224 px, both outputs) as ratios to ResNet-50's in the same run."""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from common import machine, matmul_flops, table, timed
from PIL import Image

from showtell.config import load_config
from showtell.data.formats import ImageRecord
from showtell.errors import ConfigError
from showtell.models.encoder import Encoder
from showtell.training.prepare import prepare

NAME, N, BATCH = "resnet50", 64, 16
GFLOPS_PER_IMAGE = {"resnet50": 8.2, "resnet18": 3.6, "vgg16": 31.0,  # 2 x multiply-adds at 224 px
                    "timm:convnext_tiny": 8.9, "clip:ViT-B-32": 8.8}
HUB_ENCODERS = ("timm:convnext_tiny", "clip:ViT-B-32")   # showtell[timm], showtell[clip]


def forward_rate(name: str) -> float:
    """Pictures/s of one encoder's forward pass (vector and grid) on uint8 batches in memory."""
    encoder = Encoder(name, "none").eval()
    encoder.freeze(True)
    size = encoder.transform.crop
    batch = torch.randint(0, 255, (BATCH, 3, size, size), dtype=torch.uint8)
    with torch.inference_mode():
        return BATCH / timed(lambda: encoder(batch), repeats=3, warmup=1, min_seconds=1.0)


def encoder_table(reference: float, flops: float) -> str:
    rows = [(NAME, f"{reference:.1f}", "1.00", f"{reference * GFLOPS_PER_IMAGE[NAME] * 1e9 / flops:.0%}")]
    for name in HUB_ENCODERS:
        try:
            rate = forward_rate(name)
        except ConfigError as error:   # the extra is not installed: say so, keep the rest of the report
            rows.append((name, "-", "-", str(error).splitlines()[0][:60]))
            continue
        rows.append((name, f"{rate:.1f}", f"{rate / reference:.2f}", f"{rate * GFLOPS_PER_IMAGE[name] * 1e9 / flops:.0%}"))
    return table(rows, ("encoder, forward at 224 px", "images/s", "of resnet50", "of FLOP limit"))


def main(workers: int = 2) -> str:
    torch.manual_seed(0)
    flops = matmul_flops()
    forward = forward_rate(NAME)

    with tempfile.TemporaryDirectory() as tmp:
        records = []
        for i in range(N):  # photo-like JPEGs of mixed sizes, as a dataset folder has them
            path = Path(tmp) / f"{i}.jpg"
            Image.effect_noise((480 + i % 5 * 40, 360), 40).convert("RGB").save(path, quality=90)
            records.append(ImageRecord(str(i), path, "train", ["a picture"], [["a", "picture"]]))
        rows, rates = [], {}
        for w in sorted({0, workers}):
            config = load_config(None, [f"model.encoder={NAME}", "model.encoder_weights=none",
                                        "model.freeze_encoder=false", f"data.num_workers={w}"])
            # speed only: a frozen random encoder costs what a pretrained one does (training refuses it)
            config = replace(config, model=replace(config.model, freeze_encoder=True))
            out = Path(tmp) / f"cache{w}"
            started = time.perf_counter()
            prepare(records, config, out, batch_size=BATCH, show_progress=False)
            rates[w] = N / (time.perf_counter() - started)
    per_image = GFLOPS_PER_IMAGE[NAME] * 1e9
    rows = [("pure forward pass, tensors in memory", f"{forward:.1f}", "1.00", f"{forward * per_image / flops:.0%}")]
    for w, rate in rates.items():
        rows.append((f"showtell prepare, {w} loader workers", f"{rate:.1f}", f"{rate / forward:.2f}",
                     f"{rate * per_image / flops:.0%}"))
    best = max(rates.values())
    return "\n".join([f"feature extraction, {NAME} at 224 px, {N} JPEGs, batches of {BATCH}; {machine()}",
                      f"fp32 matmul limit measured in this run: {flops / 1e9:.0f} GFLOP/s", "",
                      table(rows, ("path", "images/s", "of pure forward", "of FLOP limit")), "",
                      f"prepare reaches {best / forward:.0%} of the pure forward rate", "",
                      encoder_table(forward, flops)])


if __name__ == "__main__":
    print(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
