"""Decoding throughput: batched beam search (beam 3, 64 pictures at once) against beam search one
picture at a time, and batched greedy decoding, in captions/s; the same batched decoding for the
attention LSTM and the Transformer decoder (key-value cache) of the same width."""

from __future__ import annotations

import torch
from common import machine, table, timed

from showtell.decoding.search import beam_search, greedy
from showtell.models.attention import AttentionDecoder
from showtell.models.nic import NICDecoder
from showtell.models.transformer import TransformerDecoder
from showtell.tokenizer import specials_of

V, E, H, D, N, BEAM, MAX = 5000, 512, 512, 2048, 64, 3, 20
L = 49   # grid cells (ResNet's 7x7x2048)


class Trained(torch.nn.Module):
    """A random decoder whose <end> becomes likely after ~10 words, as a trained one's does."""

    def __init__(self, decoder=None):
        super().__init__()
        self.decoder = (decoder or NICDecoder(V, D, E, H, dropout=0.0)).eval()
        self.specials = specials_of(self.decoder)     # a prefix-LM's own end id; the word vocabulary's otherwise

    def init_state(self, features):
        state = self.decoder.init_state(features)
        state["t"] = torch.zeros(features["global"].shape[0])
        return state

    def step(self, words, state):
        t = state.pop("t")
        logprobs, state, _ = self.decoder.step(words, state)
        bias = torch.zeros_like(logprobs)
        bias[:, self.specials.end] = (t - 9).clamp(min=0) * 4.0
        state["t"] = t + 1
        return torch.log_softmax(logprobs + bias, -1), state, None


def main() -> str:
    torch.manual_seed(0)
    model = Trained()
    attention = Trained(AttentionDecoder(V, D, E, H, attention_dim=512, dropout=0.0))
    transformer = Trained(TransformerDecoder(V, D, D, L, E, H, layers=2, heads=8, ff_dim=512, dropout=0.0))
    features = {"global": torch.randn(N, D), "grid": torch.randn(N, L, D)}
    rows, rates = [], {}
    with torch.inference_mode():
        runs = {
            f"beam {BEAM}, batched ({N} pictures per call)": lambda: beam_search(model, features, BEAM, MAX),
            f"beam {BEAM}, one picture at a time": lambda: [beam_search(model, {"global": features["global"][i:i + 1]}, BEAM, MAX)
                                                             for i in range(N)],
            f"greedy, batched ({N} pictures per call)": lambda: greedy(model, features, MAX),
            f"attention LSTM, beam {BEAM}, batched": lambda: beam_search(attention, features, BEAM, MAX),
            "attention LSTM, greedy, batched": lambda: greedy(attention, features, MAX),
            f"transformer, beam {BEAM}, batched": lambda: beam_search(transformer, features, BEAM, MAX),
            "transformer, greedy, batched": lambda: greedy(transformer, features, MAX),
        }
        for name, fn in runs.items():
            seconds = timed(fn, repeats=3, warmup=1, min_seconds=0.2)
            rates[name] = N / seconds
            rows.append((name, f"{N / seconds:,.0f}"))
        lengths = beam_search(model, features, BEAM, MAX).lengths[:, 0].float().mean()
    batched, single = rates[f"beam {BEAM}, batched ({N} pictures per call)"], rates[f"beam {BEAM}, one picture at a time"]
    return "\n".join([f"decoding, vocabulary {V}, hidden {H} (NIC rows unless named; attention and transformer over a "
                      f"{L}x{D} grid, transformer 2 layers), NIC captions of {lengths:.1f} words on average; {machine()}", "",
                      table(rows, ("decoding", "captions/s")), "",
                      f"batched vs one-at-a-time beam search: {batched / single:.1f}x"])


if __name__ == "__main__":
    print(main())
