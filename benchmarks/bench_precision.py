"""bfloat16 (train.precision: bf16, autocast) against float32, for a training step and for beam search."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from bench_train import B, D, E, H, V, batch
from common import machine, matmul_flops, table, timed

from showtell.decoding.search import beam_search
from showtell.models.nic import NICDecoder


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

        times[precision] = (timed(train_step, repeats=3, warmup=1, min_seconds=0.3),
                            timed(decode, repeats=3, warmup=1, min_seconds=0.3))
    for precision, (train_s, decode_s) in times.items():
        rows.append((precision, f"{int(positions.sum()) / train_s:,.0f}", f"{16 / decode_s:,.1f}"))
    fp32, bf16 = matmul_flops(torch.float32), matmul_flops(torch.bfloat16, n=512)
    return "\n".join([f"precision, NIC decoder as in bench_train ({B} captions); {machine()}",
                      f"matmul limit measured in this run: fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.2f} GFLOP/s", "",
                      table(rows, ("precision", "training tokens/s", "beam-3 captions/s")), "",
                      f"bf16 vs fp32: training {times['fp32'][0] / times['bf16'][0]:.2f}x, "
                      f"decoding {times['fp32'][1] / times['bf16'][1]:.2f}x"])


if __name__ == "__main__":
    print(main())
