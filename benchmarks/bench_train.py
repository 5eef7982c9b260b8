"""Teacher-forced training steps of the NIC decoder: the whole sequence through nn.LSTM (padded, and
packed) against a plain per-time-step nn.LSTMCell loop of the same size, in tokens/s; beside them
the attention LSTM (one step per word) and the Transformer decoder (one parallel pass) of the same
width over a ResNet-sized grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from common import machine, matmul_flops, table, timed
from torch import nn

from showtell.models.attention import AttentionDecoder
from showtell.models.nic import NICDecoder
from showtell.models.transformer import TransformerDecoder

V, E, H, D = 5000, 512, 512, 2048        # vocabulary, embedding, hidden, image vector: a COCO-sized decoder
L = 49                                   # grid cells (ResNet's 7x7x2048) for the attention decoders
B, T = 64, 17                            # captions per step, longest caption (+ <start>)


class CellLoopDecoder(nn.Module):
    """The textbook loop: one nn.LSTMCell call per time step, as many tutorials write it."""

    def __init__(self):
        super().__init__()
        self.embed, self.init_h, self.init_c = nn.Embedding(V, E), nn.Linear(D, H), nn.Linear(D, H)
        self.cell, self.output = nn.LSTMCell(E, H), nn.Linear(H, V)

    def forward(self, features, inputs, positions):
        h, c = torch.tanh(self.init_h(features["global"])), self.init_c(features["global"])
        outs = []
        for t in range(inputs.shape[1]):
            h, c = self.cell(self.embed(inputs[:, t]), (h, c))
            outs.append(self.output(h))
        logits = torch.stack(outs, 1)[positions]
        return logits, logits.new_zeros(())   # (logits, penalty) like every decoder


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, T, (B,), generator=g)          # COCO-like: 8 to 16 words
    inputs = torch.randint(4, V, (B, T), generator=g)
    positions = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    targets = torch.randint(4, V, (B, T), generator=g)
    return {"global": torch.randn(B, D, generator=g), "grid": torch.randn(B, L, D, generator=g)}, inputs, positions, targets


def step_fn(model, pack=None):
    features, inputs, positions, targets = batch()
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    kwargs = {} if pack is None else {"pack": pack}

    def step():
        logits, _ = model(features, inputs, positions, **kwargs)
        loss = F.cross_entropy(logits, targets[positions])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, int(positions.sum())


def main() -> str:
    torch.manual_seed(0)
    nic = NICDecoder(V, D, E, H, dropout=0.0)
    loop = CellLoopDecoder()
    attention = AttentionDecoder(V, D, E, H, attention_dim=512, dropout=0.0)
    transformer = TransformerDecoder(V, D, D, L, E, H, layers=2, heads=8, ff_dim=512, dropout=0.0)
    flops = matmul_flops()
    rows = []
    results = {}
    for name, model, pack in (("NIC, nn.LSTM over the sequence (padded)", nic, False),
                              ("NIC, nn.LSTM over the sequence (packed)", nic, True),
                              ("per-step nn.LSTMCell loop", loop, None),
                              ("attention LSTM, one step per word", attention, None),
                              ("transformer, 2 layers, one pass", transformer, None)):
        step, tokens = step_fn(model, pack)
        seconds = timed(step, repeats=5)
        results[name] = tokens / seconds
        if model is attention or model is transformer:   # no FLOP count kept for these: tokens/s only
            rows.append((name, f"{tokens / seconds:,.0f}", "", ""))
            continue
        # forward+backward ~ 3x forward; forward per token: LSTM 8H(E+H) + output 2HV FLOPs
        useful = 3 * tokens * (8 * H * (E + H) + 2 * H * V)
        rows.append((name, f"{tokens / seconds:,.0f}", f"{useful / seconds / 1e9:.1f}", f"{useful / seconds / flops:.0%}"))
    base = results["per-step nn.LSTMCell loop"]
    best = max(v for k, v in results.items() if k.startswith("NIC"))
    fast = results["transformer, 2 layers, one pass"]
    text = [f"training step, vocabulary {V}, embedding {E}, hidden {H}, {B} captions of 8-16 words, "
            f"grid {L}x{D} for attention and transformer; {machine()}",
            f"fp32 matmul limit measured in this run: {flops / 1e9:.0f} GFLOP/s", "",
            table(rows, ("decoder", "tokens/s", "GFLOP/s", "of matmul limit")), "",
            f"NIC whole-sequence step vs per-step loop: {best / base:.2f}x",
            f"transformer vs attention LSTM: {fast / results['attention LSTM, one step per word']:.2f}x; "
            f"transformer vs NIC: {fast / best:.2f}x"]
    return "\n".join(text)


if __name__ == "__main__":
    print(main())
