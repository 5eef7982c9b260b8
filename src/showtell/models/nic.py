"""Show and Tell (Vinyals et al., 2015): an LSTM language model conditioned on one image vector.

    p(S | I) = prod_t p(S_t | I, S_0 .. S_{t-1})

The image vector enters the LSTM once, either as its initial hidden and cell state
(`init_state`, the write-up we follow) or as its input at step -1 before the <start> word
(`first_input`, the paper). `every_step` (not the paper's: it found that overfitting) starts
from the image as `init_state` does and puts the image's projection beside every word's embedding
too, as LRCN (Donahue et al., 2015) does. Training feeds the true previous words (teacher forcing) through
`nn.LSTM` over the whole sequence at once; decoding calls `step` one word at a time.

Decoding interface shared by every decoder (see decode.py):
    state = decoder.init_state(features)           # dict of tensors, batch first
    logprobs, state, attention = decoder.step(words, state)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..architectures import DECODERS


class NICDecoder(nn.Module):
    uses_grid = DECODERS["nic"].uses_grid

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 num_layers: int = 1, dropout: float = 0.5, image_injection: str = "init_state"):
        super().__init__()
        self.vocab_size, self.hidden_dim, self.num_layers = vocab_size, hidden_dim, num_layers
        self.image_injection = image_injection
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        if image_injection in ("init_state", "every_step"):
            self.init_h = nn.Linear(feature_dim, num_layers * hidden_dim)
            self.init_c = nn.Linear(feature_dim, num_layers * hidden_dim)
        if image_injection in ("first_input", "every_step"):
            self.image_proj = nn.Linear(feature_dim, embed_dim)
        lstm_input = 2 * embed_dim if image_injection == "every_step" else embed_dim
        self.lstm = nn.LSTM(lstm_input, hidden_dim, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)

    def _lstm_state(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        image = features["global"]                                          # (B, Dg)
        b = image.shape[0]
        if self.image_injection in ("init_state", "every_step"):
            h = torch.tanh(self.init_h(image)).view(b, self.num_layers, self.hidden_dim)
            c = self.init_c(image).view(b, self.num_layers, self.hidden_dim)
            return h.transpose(0, 1).contiguous(), c.transpose(0, 1).contiguous()  # (layers, B, H)
        x = self.dropout(self.image_proj(image)).unsqueeze(1)               # (B, 1, E): the step -1 input
        zeros = x.new_zeros(self.num_layers, b, self.hidden_dim)
        _, (h, c) = self._run_lstm(x, (zeros, zeros))
        return h, c

    def _run_lstm(self, x: torch.Tensor | PackedSequence, state):
        """nn.LSTM, kept in float32 on the CPU: oneDNN has no bfloat16 LSTM (autocast would fail)."""
        if state[0].device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                if isinstance(x, PackedSequence):
                    x = PackedSequence(x.data.float(), x.batch_sizes, x.sorted_indices, x.unsorted_indices)
                else:
                    x = x.float()
                return self.lstm(x, tuple(s.float() for s in state))
        return self.lstm(x, state)

    def picture_input(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """every_step: the image's projection that goes beside each word, (B, E)."""
        return self.dropout(self.image_proj(features["global"]))

    def _with_picture(self, x: torch.Tensor, features=None, picture=None) -> torch.Tensor:
        if self.image_injection != "every_step":
            return x
        picture = self.picture_input(features) if picture is None else picture
        return torch.cat([x, picture.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)

    def forward(self, features: dict[str, torch.Tensor], inputs: torch.Tensor,
                positions: torch.Tensor | None = None, pack: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: inputs (B, T) = <start> w1 .. -> (logits (B, T, V), or (N, V) for the
        N positions where `positions` (B, T) is true; penalty 0). The vocabulary layer only ever
        runs on real positions. With `pack`, captions shorter than the longest are packed so the
        LSTM does no work on their padding; it is off by default (README, "Speed and scale")."""
        x = self._with_picture(self.dropout(self.embed(inputs)), features)  # (B, T, E or 2E)
        state = self._lstm_state(features)
        if pack and positions is not None and bool((positions.sum(1) < inputs.shape[1]).any()):
            lengths = positions.sum(1).cpu()
            packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self._run_lstm(packed, state)
            hidden, _ = pad_packed_sequence(out, batch_first=True, total_length=inputs.shape[1])
        else:
            hidden, _ = self._run_lstm(x, state)                            # (B, T, H)
        if positions is not None:
            hidden = hidden[positions]                                      # (N, H)
        logits = self.output(self.dropout(hidden))
        return logits, logits.new_zeros(())                                 # NIC has no penalty

    def init_state(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h, c = self._lstm_state(features)
        state = {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}            # batch first: (B, layers, H)
        if self.image_injection == "every_step":
            state["picture_input"] = self.picture_input(features)           # (B, E), the same every step
        return state

    def step(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        """One word (B,) -> log-probabilities of the next (B, V), the new state, no attention."""
        h, c = state["h"].transpose(0, 1).contiguous(), state["c"].transpose(0, 1).contiguous()
        x = self._with_picture(self.dropout(self.embed(words)).unsqueeze(1), picture=state.get("picture_input"))
        out, (h, c) = self._run_lstm(x, (h, c))
        logprobs = F.log_softmax(self.output(self.dropout(out[:, 0])).float(), dim=-1)
        after = {"h": h.transpose(0, 1), "c": c.transpose(0, 1)}
        if "picture_input" in state:
            after["picture_input"] = state["picture_input"]
        return logprobs, after, None


def build(m, vocab_size: int, encoder, embed_dim: int, pretrained: bool = True) -> NICDecoder:
    """The decoder for `model` settings `m` over `encoder` (architectures.DECODERS names this function)."""
    return NICDecoder(vocab_size, encoder.global_dim, embed_dim, m.hidden_dim, m.num_layers, m.dropout,
                      m.image_injection)
