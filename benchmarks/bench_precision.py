"""bfloat16 (train.precision: bf16, autocast) against float32, for a training step and for beam search.

Two training steps: a COCO-sized NIC decoder alone (as bench_train), and the synth preset's whole
step at 96 px (the small CNN trained from scratch + NIC, the preset's pictures x 3 captions), timed
in alternating rounds of fp32 and bf16 so that a slower stretch of a shared machine hits both; the
spread of the rounds is printed. bf16 pays only where the CPU has bf16 hardware; to see another
kind of CPU's kernels on this one, hold oneDNN to them: `ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`
(AVX-512 with bf16, no AMX), `ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2
ONEDNN_MAX_CPU_ISA=AVX2`.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from bench_train import B, D, E, H, V, batch
from common import WIDE_CNN, alternating_rounds, machine, matmul_flops, table, timed

from showtell.config import load_config
from showtell.decoding.search import beam_search
from showtell.models.caption_model import build_model
from showtell.models.nic import NICDecoder
from showtell.vocab import END, START, Vocabulary

SIZE, ROUNDS = 96, 6
PRESET = load_config("synth", [f"data.image_size={SIZE}", WIDE_CNN])
PICTURES = PRESET.train.batch_size


def preset_step(precision: str, config=PRESET):
    """One training step of the synth preset's NIC (`config`: at SIZE px, the wide CNN), CNN included,
    on random pictures."""
    generator = torch.Generator().manual_seed(0)
    vocab = Vocabulary.build([[f"w{i}" for i in range(30)]], min_word_count=1)
    model = build_model(config, vocab).train()
    size, pictures, repeats = config.data.image_size, config.train.batch_size, config.train.captions_per_image
    images = torch.randint(0, 256, (pictures, 3, size, size), dtype=torch.uint8, generator=generator)
    tokens = torch.randint(4, len(vocab), (pictures * repeats, 14), generator=generator)
    tokens[:, 0], tokens[:, -1] = START, END
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(tokens, images=images, repeats=repeats).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def main() -> str:
    torch.manual_seed(0)
    model = NICDecoder(V, D, E, H, dropout=0.0)
    features, inputs, positions, targets = batch()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    rows, times = [], {}
    for precision in ("fp32", "bf16"):
        def train_step(precision=precision):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = F.cross_entropy(model(features, inputs, positions)[0].float(), targets[positions])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        def decode(precision=precision):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                beam_search(model.eval(), {"global": features["global"][:16]}, 3, 12)
            model.train()

        times[precision] = [timed(train_step, repeats=3, warmup=1, min_seconds=0.3),
                            timed(decode, repeats=3, warmup=1, min_seconds=0.3)]
    rounds = alternating_rounds({precision: preset_step(precision) for precision in times}, ROUNDS)
    for precision, seconds in rounds.items():
        times[precision].append(statistics.median(seconds))
    for precision, (train_s, decode_s, preset_s) in times.items():
        spread = f"{PICTURES / max(rounds[precision]):,.0f}-{PICTURES / min(rounds[precision]):,.0f}"
        rows.append((precision, f"{int(positions.sum()) / train_s:,.0f}", f"{16 / decode_s:,.1f}",
                     f"{PICTURES / preset_s:,.0f} ({spread})"))
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16, n=512)
    return "\n".join([f"precision: NIC decoder as in bench_train ({B} captions); synth NIC step at {SIZE} px with its "
                      f"CNN, {PICTURES} pictures x {PRESET.train.captions_per_image} captions, median of {ROUNDS} "
                      f"alternating rounds (their range); {machine()}",
                      f"matmul limit measured in this run: fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.2f} GFLOP/s", "",
                      table(rows, ("precision", "training tokens/s", "beam-3 captions/s",
                                   f"synth NIC step at {SIZE} px, pictures/s (rounds)")), "",
                      f"bf16 vs fp32: training {times['fp32'][0] / times['bf16'][0]:.2f}x, "
                      f"decoding {times['fp32'][1] / times['bf16'][1]:.2f}x, "
                      f"synth NIC step {times['fp32'][2] / times['bf16'][2]:.2f}x"])


if __name__ == "__main__":
    print(main())
