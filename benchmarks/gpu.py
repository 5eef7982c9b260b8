"""COCO-scale speed on one GPU, on synthetic tensors: seconds per training epoch and per validation
decode, NIC and attention, fp32 and bf16. One prepared command, at most about 5 minutes on an H100/H200:

    python benchmarks/gpu.py                 # COCO scale: 123,287 images, 414,113 captions, 10,000 words
    python benchmarks/gpu.py --scale 0.001 --device cpu --max-steps 1 --warmup 0 --val-images 8 --precision fp32   (a smoke run)

Features stand in for a frozen encoder's cache (ResNet: 2048-d vector, 7x7x2048 grid), so the
numbers are the decoder's: what `showtell train --features` spends per epoch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from showtell.decoding.search import beam_search, greedy
from showtell.models.attention import AttentionDecoder
from showtell.models.nic import NICDecoder

IMAGES, CAPTIONS, VOCAB = 123_287, 414_113, 10_000


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def epoch_seconds(decoder, features, tokens, device, precision: str, images_per_step: int, max_steps: int,
                  warmup: int = 3) -> float:
    """Time `max_steps` steps of images_per_step pictures x 5 captions; scale to a whole epoch."""
    n = next(iter(features.values())).shape[0]
    optimizer = torch.optim.Adam(decoder.parameters(), 4e-4)
    steps_per_epoch = max(1, n // images_per_step)
    steps = min(max_steps, steps_per_epoch)
    g = torch.Generator(device="cpu").manual_seed(0)

    def step():
        idx = torch.randint(0, n, (images_per_step,), generator=g).to(device)
        feats = {k: v[idx].float().repeat_interleave(5, 0) for k, v in features.items()}
        caps = tokens[torch.randint(0, tokens.shape[0], (images_per_step * 5,), generator=g).to(device)]
        inputs, targets = caps[:, :-1], caps[:, 1:]
        positions = targets != 0
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits, _ = decoder(feats, inputs, positions)   # every decoder: (logits, penalty)
            loss = F.cross_entropy(logits.float(), targets[positions])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - started) / steps * steps_per_epoch


def decode_seconds(decoder, features, device, precision: str, n: int, beam: int) -> float:
    decoder.eval()
    batch = 500
    started = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        for i in range(0, n, batch):
            feats = {k: v[i:i + batch].float() for k, v in features.items()}
            (greedy(decoder, feats, 16) if beam == 1 else beam_search(decoder, feats, beam, 16))
    sync(device)
    decoder.train()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of COCO's size")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-steps", type=int, default=300, help="timed steps per measurement (then scaled)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--val-images", type=int, default=5000, help="pictures decoded for the validation timing")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--json", action="store_true", help="print the summary on one line")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    n_images, n_captions = max(64, int(IMAGES * args.scale)), max(320, int(CAPTIONS * args.scale))
    # captions of 8-16 words + <start>/<end>, ids 4.., padded with 0
    lengths = torch.randint(8, 17, (n_captions,))
    tokens = torch.randint(4, VOCAB, (n_captions, 18))
    tokens[:, 0] = 1
    tokens[torch.arange(18).unsqueeze(0) > lengths.unsqueeze(1)] = 0
    tokens[torch.arange(n_captions), lengths] = 2
    tokens = tokens.to(device)
    results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "images": n_images, "captions": n_captions, "torch": torch.__version__}
    global_features = {"global": torch.randn(n_images, 2048, device=device, dtype=torch.float16)}
    grid_features = {"grid": torch.randn(n_images, 49, 2048, device=device, dtype=torch.float16)}
    val = min(args.val_images, n_images)
    for name, make, features, per_step in (
            ("nic", lambda: NICDecoder(VOCAB, 2048, 512, 512, dropout=0.5), global_features, 128),
            ("attention", lambda: AttentionDecoder(VOCAB, 2048, 512, 512, 512, dropout=0.5), grid_features, 64)):
        for precision in args.precision:
            decoder = make().to(device)
            results[f"{name}_{precision}_epoch_s"] = round(
                epoch_seconds(decoder, features, tokens, device, precision, per_step, args.max_steps, args.warmup), 2)
            results[f"{name}_{precision}_decode_beam3_val_s"] = round(
                decode_seconds(decoder, {k: v[:val] for k, v in features.items()}, device, precision, val, 3), 2)
            print(json.dumps({k: v for k, v in results.items() if k.startswith(f"{name}_{precision}")}), flush=True)
    if device.type == "cuda":
        results["peak_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
