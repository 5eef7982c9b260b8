"""Show, Attend and Tell (Xu et al., 2015): soft attention over the encoder's grid at every word.

At step t the decoder scores each of the L grid locations a_i against its previous state,

    e_ti = w . tanh(W_a a_i + W_h h_{t-1}),   alpha_t = softmax(e_t),   z_t = beta_t * sum_i alpha_ti a_i

with a gating scalar beta_t = sigmoid(f(h_{t-1})), and feeds [embedding of the previous word; z_t]
to an LSTM cell. As in the paper's deep output layer, the next word is read from h_t + L_z z_t,
so the word that names a thing sees the place attended for it directly. The initial state comes from the mean of the
grid. Training adds the doubly stochastic penalty lambda * mean_i (1 - sum_t alpha_ti)^2, which
asks every location to be looked at about once over the sentence (averaged over locations, so
lambda means the same for a 4x4 and a 14x14 grid).

Attention needs the previous state, so teacher forcing runs one step at a time (the attention
projection of the grid, W_a a, is computed once per image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttentionDecoder(nn.Module):
    uses_grid = True

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

    def init_state(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        grid = features["grid"]                                               # (B, L, D)
        mean = grid.mean(dim=1)
        return {"h": torch.tanh(self.init_h(mean)), "c": torch.tanh(self.init_c(mean)),
                "grid": grid, "keys": self.attend_features(grid)}             # keys: (B, L, A)

    def attend(self, state: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(context (B, D), weights (B, L)) for the current hidden state."""
        scores = self.attend_score(torch.tanh(state["keys"] + self.attend_hidden(state["h"]).unsqueeze(1))).squeeze(2)
        alpha = F.softmax(scores.float(), dim=1).to(state["grid"].dtype)      # (B, L)
        context = torch.bmm(alpha.unsqueeze(1), state["grid"]).squeeze(1)     # (B, D)
        gate = torch.sigmoid(self.gate(state["h"]))
        return gate * context, alpha

    def _advance(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        context, alpha = self.attend(state)
        h, c = self.cell(torch.cat([self.dropout(self.embed(words)), context], dim=1), (state["h"], state["c"]))
        logits = self.output(self.dropout(h + self.context_out(context)))  # deep output: the word sees z_t too
        return logits, {**state, "h": h, "c": c}, alpha

    def step(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        """One word (B,) -> log-probabilities of the next (B, V), the new state, attention (B, L)."""
        logits, state, alpha = self._advance(words, state)
        return F.log_softmax(logits.float(), dim=-1), state, alpha

    def forward(self, features: dict[str, torch.Tensor], inputs: torch.Tensor,
                positions: torch.Tensor | None = None):
        """Teacher forcing -> (logits (B, T, V) or (N, V) at `positions`, attention penalty summed over captions)."""
        state = self.init_state(features)
        logits, alphas = [], []
        for t in range(inputs.shape[1]):
            step_logits, state, alpha = self._advance(inputs[:, t], state)
            logits.append(step_logits)
            alphas.append(alpha)
        logits = torch.stack(logits, dim=1)                                   # (B, T, V)
        penalty = self.attention_penalty(torch.stack(alphas, dim=1), positions)
        if positions is not None:
            logits = logits[positions]
        return logits, penalty

    def attention_penalty(self, alphas: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """lambda * sum over captions of mean_i (1 - sum_t alpha_ti)^2, over the words each caption has."""
        if positions is not None:
            alphas = alphas * positions.unsqueeze(-1).to(alphas.dtype)
        return self.regularization * ((1.0 - alphas.sum(dim=1)) ** 2).mean(dim=1).sum()
