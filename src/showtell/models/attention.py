"""Show, Attend and Tell (Xu et al., 2015): soft attention over the encoder's grid at every word.

At step t the decoder scores each of the L grid locations a_i against its previous state,

    e_ti = w . tanh(W_a a_i + W_h h_{t-1}),   alpha_t = softmax(e_t),   z_t = beta_t * sum_i alpha_ti a_i

with a gating scalar beta_t = sigmoid(f(h_{t-1})), and feeds [embedding of the previous word; z_t]
to an LSTM cell. As in the paper's deep output layer, the next word is read from h_t + L_z z_t,
so the word that names a thing sees the place attended for it directly. The initial state comes from the mean of the
grid. Training adds the doubly stochastic penalty lambda * mean_i (1 - sum_t alpha_ti)^2, which
asks every location to be looked at about once over the sentence (averaged over locations, so
lambda means the same for a 4x4 and a 14x14 grid).

Attention needs the previous state, so teacher forcing runs one step at a time; what does not
depend on the step is taken out of the loop: the attention projection of the grid (W_a a) once
per picture, before its captions are repeated; the words' input projection before the loop; the
output layers after it, on the real words only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import DECODERS


class AttentionDecoder(nn.Module):
    uses_grid = DECODERS["attention"].uses_grid

    def __init__(self, vocab_size: int, feature_dim: int, embed_dim: int = 512, hidden_dim: int = 512,
                 attention_dim: int = 512, dropout: float = 0.5, regularization: float = 1.0):
        super().__init__()
        self.vocab_size, self.hidden_dim, self.regularization = vocab_size, hidden_dim, regularization
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.attend_features = nn.Linear(feature_dim, attention_dim)
        self.attend_hidden = nn.Linear(hidden_dim, attention_dim)
        self.attend_score = nn.Linear(attention_dim, 1)
        self.gate = nn.Linear(hidden_dim, feature_dim)
        self.cell = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.context_out = nn.Linear(feature_dim, hidden_dim, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_dim, vocab_size)
        self._fused_cache = None

    def picture_features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What depends only on the picture, computed once per picture before its captions are
        repeated (training runs several captions per picture): the attention keys W_a a."""
        return {**features, "picture_keys": self.attend_features(features["grid"])}      # (B, L, A)

    def init_state(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grid = features["grid"]                                               # (B, L, D)
        keys = features["picture_keys"] if "picture_keys" in features else self.attend_features(grid)
        mean = grid.mean(dim=1)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)),
                "picture_grid": grid, "picture_keys": keys}                  # picture_*: the same for a picture's beams

    def _fused(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weights one step uses, arranged once rather than at every word: h's projections into
        the attention MLP and into the gate as one matrix, and the LSTM's input weights for the
        context (its word part is applied before the loop). Without gradients (decoding) they are
        kept until the parameters change."""
        e = self.embed.embedding_dim
        parameters = (self.attend_hidden.weight, self.gate.weight, self.attend_hidden.bias, self.gate.bias,
                      self.cell.weight_ih)
        try:
            key = tuple((p.data_ptr(), p._version) for p in parameters)
        except RuntimeError:   # traced (ONNX export, torch.compile): tensors without storage, nothing to keep
            key = None
        cached = self._fused_cache
        if key is not None and not torch.is_grad_enabled() and cached is not None and cached[0] == key:
            return cached[1]
        fused = (torch.cat([self.attend_hidden.weight, self.gate.weight]),
                 torch.cat([self.attend_hidden.bias, self.gate.bias]),
                 self.cell.weight_ih[:, e:].contiguous())
        self._fused_cache = (key, fused) if key is not None and not torch.is_grad_enabled() else None
        return fused

    def attend(self, state: dict[str, torch.Tensor], fused=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(gated context (B, D), weights (B, L)) for the current hidden state; the two projections
        of h (into the attention MLP and into the gate) are one matrix product."""
        a = self.attend_hidden.out_features
        weight, bias, _ = fused or self._fused()
        projected = F.linear(state["h"], weight, bias)                        # (B, A + D)
        query, gate = projected[:, :a], projected[:, a:]
        scores = self.attend_score(torch.tanh(state["picture_keys"] + query.unsqueeze(1))).squeeze(2)
        alpha = F.softmax(scores.float(), dim=1).to(state["picture_grid"].dtype)   # (B, L)
        context = torch.bmm(alpha.unsqueeze(1), state["picture_grid"]).squeeze(1)  # (B, D)
        return torch.sigmoid(gate) * context, alpha

    def _word_inputs(self, words: torch.Tensor) -> torch.Tensor:
        """The LSTM's input projection of the previous words' embeddings, with its bias: (..., 4H). The
        context's part is added in `_advance`; splitting them lets teacher forcing do this for every
        word in one product."""
        e = self.embed.embedding_dim
        return F.linear(self.dropout(self.embed(words)), self.cell.weight_ih[:, :e], self.cell.bias_ih)

    def _advance(self, word_inputs: torch.Tensor, state: dict[str, torch.Tensor], fused):
        """One LSTM step from the words' input projection (B, 4H): (h, c, context, alpha)."""
        context, alpha = self.attend(state, fused)
        h, c = torch._VF.lstm_cell(context, (state["h"], state["c"]), fused[2], self.cell.weight_hh,
                                   word_inputs, self.cell.bias_hh)
        return h, c, context, alpha

    def _logits(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.output(self.dropout(h + self.context_out(context)))  # deep output: the word sees z_t too

    def step(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        """One word (B,) -> log-probabilities of the next (B, V), the new state, attention (B, L)."""
        h, c, context, alpha = self._advance(self._word_inputs(words), state, self._fused())
        return F.log_softmax(self._logits(h, context).float(), dim=-1), {**state, "h": h, "c": c}, alpha

    def forward(self, features: dict[str, torch.Tensor], inputs: torch.Tensor,
                positions: torch.Tensor | None = None):
        """Teacher forcing -> (logits (B, T, V) or (N, V) at `positions`, attention penalty summed over
        captions). Only attention and the LSTM cell run word by word: the words' input projection comes
        before the loop, the output layers after it, on the real positions only."""
        state = self.init_state(features)
        word_inputs = self._word_inputs(inputs)                               # (B, T, 4H)
        fused = self._fused()
        hs, contexts, alphas = [], [], []
        for word_input in word_inputs.unbind(1):   # unbind, not [:, t]: its gradient is one stack, not T zero-filled copies
            h, c, context, alpha = self._advance(word_input, state, fused)
            state = {**state, "h": h, "c": c}
            hs.append(h)
            contexts.append(context)
            alphas.append(alpha)
        h, context = torch.stack(hs, dim=1), torch.stack(contexts, dim=1)    # (B, T, H), (B, T, D)
        penalty = self.attention_penalty(torch.stack(alphas, dim=1), positions)
        if positions is not None:
            h, context = h[positions], context[positions]
        return self._logits(h, context), penalty

    def attention_penalty(self, alphas: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """lambda * sum over captions of mean_i (1 - sum_t alpha_ti)^2, over the words each caption has."""
        if positions is not None:
            alphas = alphas * positions.unsqueeze(-1).to(alphas.dtype)
        return self.regularization * ((1.0 - alphas.sum(dim=1)) ** 2).mean(dim=1).sum()


def build(m, vocab_size: int, encoder, embed_dim: int, pretrained: bool = True) -> AttentionDecoder:
    """The decoder for `model` settings `m` over `encoder` (architectures.DECODERS names this function)."""
    return AttentionDecoder(vocab_size, encoder.grid_dim, embed_dim, m.hidden_dim, m.attention_dim, m.dropout,
                            m.attention_regularization)
