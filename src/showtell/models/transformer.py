"""A Transformer decoder (Vaswani et al., 2017) in the Show and Tell family: the LSTM replaced by
causal self-attention over the words so far and cross-attention over the encoder's grid.

The memory the words attend to is the encoder's L grid cells plus the pooled image vector as one
extra slot (L + 1 slots), each projected to the model width, given a learned slot embedding (the
cells' places: without it "left of" cannot be told from "right of") and layer-normalised. Layers
are pre-norm (LayerNorm before each sub-layer, residual around it; one more LayerNorm at the top),
which trains without a careful warm-up:

    x = x + SelfAttention(LN(x))      (causal: word t sees words <= t)
    x = x + CrossAttention(LN(x), memory)
    x = x + FeedForward(LN(x))

Training (teacher forcing) runs the whole caption in one pass under a causal mask. Decoding uses
the interface every decoder shares (decode.py), with a key-value cache:

    state = decoder.init_state(features)
    logprobs, state, attention = decoder.step(words, state)

The state holds only batch-first tensors, so beam search can reorder it row by row:
  picture_memory_k, picture_memory_v  (B, layers, L+1, W)   cross-attention keys and values, projected once
                      per picture (in training, before its captions are repeated; picture_*: the same
                      for every beam of a picture, so beam search need not copy them)
  self_k, self_v      (B, layers, t, W)     the words so far; t (the next position) is read from the shape
The attention returned by `step` is the mean over heads of one layer's cross-attention (the last
by default), over the L grid cells only: the pooled slot's weight is dropped and the rest
renormalised to sum to 1, so maps compare with the attention LSTM's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import DECODERS

MAX_POSITIONS = DECODERS["transformer"].positions   # 256: decode.max_length (<= 200) + the <end> step, and more


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, W) -> (B, heads, T, W / heads)."""
    b, t, w = x.shape
    return x.reshape(b, t, heads, w // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, T, d) -> (B, T, heads * d)."""
    b, h, t, d = x.shape
    return x.transpose(1, 2).reshape(b, t, h * d)


def sinusoids(length: int, width: int) -> torch.Tensor:
    """The fixed positions of Vaswani et al.: sin/cos of geometrically spaced frequencies, (length, width)."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(length, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: width // 2])
    return table


class Layer(nn.Module):
    def __init__(self, width: int, heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm_self, self.norm_cross, self.norm_ff = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)            # self-attention: query, key, value of each word
        self.self_out = nn.Linear(width, width)
        self.cross_q = nn.Linear(width, width)
        self.cross_kv = nn.Linear(width, 2 * width)       # applied to the memory once per image
        self.cross_out = nn.Linear(width, width)
        self.ff = nn.Sequential(nn.Linear(width, ff_dim), nn.GELU(), nn.Linear(ff_dim, width))
        self.dropout = nn.Dropout(dropout)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross_kv(memory).chunk(2, dim=-1)     # 2 x (B, M, W)

    def forward(self, x, memory_k, memory_v, cache_k=None, cache_v=None, weights: bool = False):
        """x (B, T, W): the new words. Without a cache they are the whole caption and attend
        causally; with one (B, S, W), they attend to the cached words and themselves (decoding, T = 1).
        Returns x, the keys and values of every word so far (B, S+T, W) and, if `weights`, the
        cross-attention weights averaged over heads (B, T, M)."""
        h = self.heads
        q, k, v = self.qkv(self.norm_self(x)).chunk(3, dim=-1)
        if cache_k is not None:
            k, v = torch.cat([cache_k, k.to(cache_k.dtype)], dim=1), torch.cat([cache_v, v.to(cache_v.dtype)], dim=1)
        attended = F.scaled_dot_product_attention(_heads(q, h), _heads(k, h), _heads(v, h), is_causal=cache_k is None)
        x = x + self.dropout(self.self_out(_merge(attended)))
        q = _heads(self.cross_q(self.norm_cross(x)), h)
        mk, mv = _heads(memory_k, h), _heads(memory_v, h)
        alpha = None
        if weights:   # written out to keep the weights; the same numbers as the fused kernel
            scores = q @ mk.transpose(-2, -1) / math.sqrt(q.shape[-1])
            probs = scores.float().softmax(dim=-1).to(mv.dtype)                     # (B, heads, T, M)
            attended = probs @ mv
            alpha = probs.float().mean(dim=1)
        else:
            attended = F.scaled_dot_product_attention(q, mk, mv)
        x = x + self.dropout(self.cross_out(_merge(attended)))
        x = x + self.dropout(self.ff(self.norm_ff(x)))
        return x, k, v, alpha


class TransformerDecoder(nn.Module):
    uses_grid = DECODERS["transformer"].uses_grid

    def __init__(self, vocab_size: int, grid_dim: int, global_dim: int, grid_size: int, embed_dim: int = 512,
                 width: int = 512, layers: int = 2, heads: int = 4, ff_dim: int = 512, dropout: float = 0.1,
                 positions: str = "learned", tie_embeddings: bool = False, attention_layer: int = -1):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.vocab_size, self.width, self.grid_size = vocab_size, width, grid_size
        self.attention_layer = attention_layer % layers
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.embed_in = nn.Linear(embed_dim, width) if embed_dim != width else nn.Identity()
        if positions == "learned":
            self.positions = nn.Embedding(MAX_POSITIONS, width)
        else:
            self.register_buffer("sinusoids", sinusoids(MAX_POSITIONS, width), persistent=False)
            self.positions = None
        self.grid_in = nn.Linear(grid_dim, width)
        self.global_in = nn.Linear(global_dim, width)
        self.slots = nn.Parameter(torch.zeros(grid_size + 1, width))      # where each memory slot is
        self.memory_norm = nn.LayerNorm(width)
        self.layers = nn.ModuleList(Layer(width, heads, ff_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.tie_embeddings = tie_embeddings
        if tie_embeddings:   # logits = (W_o h) . embedding of each word + bias
            self.embed_out = nn.Linear(width, embed_dim) if embed_dim != width else nn.Identity()
            self.output_bias = nn.Parameter(torch.zeros(vocab_size))
        else:
            self.output = nn.Linear(width, vocab_size)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        """GPT-2's initialisation: small normal weights, zero biases (PyTorch's defaults give the
        tied output layer logits of size ~sqrt(embed_dim) at the start)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, TransformerDecoder):
            nn.init.normal_(module.slots, std=0.02)

    def _memory(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        grid = self.grid_in(features["grid"])                                 # (B, L, W)
        pooled = self.global_in(features["global"]).unsqueeze(1)              # (B, 1, W)
        memory = torch.cat([grid, pooled], dim=1)                             # (B, L+1, W)
        if memory.shape[1] != self.slots.shape[0]:
            raise ValueError(f"the decoder was built for {self.slots.shape[0] - 1} grid cells, got {grid.shape[1]}")
        return self.memory_norm(memory + self.slots)

    def _embed(self, words: torch.Tensor, start: int) -> torch.Tensor:
        """Word ids (B, T) at positions start.. -> (B, T, W)."""
        t = words.shape[1]
        if start + t > MAX_POSITIONS:
            raise ValueError(f"the transformer decoder handles at most {MAX_POSITIONS} positions")
        index = torch.arange(start, start + t, device=words.device)
        where = self.positions(index) if self.positions is not None else self.sinusoids[start:start + t]
        return self.dropout(self.embed_in(self.embed(words)) + where)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.norm(x))
        if self.tie_embeddings:
            return F.linear(self.embed_out(x), self.embed.weight, self.output_bias)
        return self.output(x)

    def forward(self, features: dict[str, torch.Tensor], inputs: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing in one pass: inputs (B, T) = <start> w1 .. -> (logits (B, T, V), or
        (N, V) at the N positions where `positions` is true; penalty 0). Words after a caption's
        end are <pad>; the causal mask keeps every real word from seeing them."""
        memory_k, memory_v = self._memory_kv(features)
        x = self._embed(inputs, 0)                                            # (B, T, W)
        for i, layer in enumerate(self.layers):
            x, _, _, _ = layer(x, memory_k[:, i], memory_v[:, i])
        if positions is not None:
            x = x[positions]                                                  # (N, W): the vocabulary layer on real words only
        logits = self._logits(x)
        return logits, logits.new_zeros(())

    def _memory_kv(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Every layer's cross-attention keys and values of the memory: (B, layers, L+1, W) twice."""
        if "picture_memory_k" in features:
            return features["picture_memory_k"], features["picture_memory_v"]
        memory = self._memory(features)
        keys, values = zip(*(layer.memory_kv(memory) for layer in self.layers))
        return torch.stack(keys, dim=1), torch.stack(values, dim=1)

    def picture_features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What depends only on the picture, computed once per picture before its captions are repeated."""
        memory_k, memory_v = self._memory_kv(features)
        return {**features, "picture_memory_k": memory_k, "picture_memory_v": memory_v}

    def init_state(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        memory_k, memory_v = self._memory_kv(features)                              # (B, layers, L+1, W)
        empty = memory_k[:, :, :0]                                                  # (B, layers, 0, W)
        return {"picture_memory_k": memory_k, "picture_memory_v": memory_v, "self_k": empty, "self_v": empty}

    def step(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        """One word (B,) -> log-probabilities of the next (B, V), the new state, attention (B, L)."""
        t = state["self_k"].shape[2]
        x = self._embed(words.unsqueeze(1), t)                                # (B, 1, W)
        new_k, new_v, alpha = [], [], None
        for i, layer in enumerate(self.layers):
            want = i == self.attention_layer
            x, k, v, weights = layer(x, state["picture_memory_k"][:, i], state["picture_memory_v"][:, i],
                                     state["self_k"][:, i], state["self_v"][:, i], weights=want)
            new_k.append(k)                                                   # (B, t+1, W)
            new_v.append(v)
            if want:
                alpha = weights[:, 0, :-1]                                    # (B, L): the pooled slot dropped
                alpha = alpha / alpha.sum(dim=-1, keepdim=True).clamp(min=1e-12)
        logprobs = F.log_softmax(self._logits(x[:, 0]).float(), dim=-1)
        state = {**state, "self_k": torch.stack(new_k, dim=1), "self_v": torch.stack(new_v, dim=1)}
        return logprobs, state, alpha

    def attention_penalty(self, alphas: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
        """No attention regulariser (scheduled sampling asks every decoder that returns attention)."""
        return alphas.new_zeros(())


def build(m, vocab_size: int, encoder, embed_dim: int, pretrained: bool = True) -> TransformerDecoder:
    """The decoder for `model` settings `m` over `encoder` (architectures.DECODERS names this function)."""
    return TransformerDecoder(vocab_size, encoder.grid_dim, encoder.global_dim, encoder.grid_size, embed_dim,
                              m.hidden_dim, m.transformer_layers, m.transformer_heads, m.transformer_ff_dim,
                              m.dropout, m.transformer_positions, m.transformer_tie_embeddings,
                              m.transformer_attention_layer)
