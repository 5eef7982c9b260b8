"""A pretrained causal language model as the decoder (ClipCap, Mokady et al. 2021): the picture
becomes `prefix_length` input vectors of the LM, and the LM writes the caption after them.

    prefix = mapper(image vector)                       # (B, P, W), W the LM's width
    p(t_i | I, t_<i) = LM([prefix; embed(t_1 .. t_i-1)]) at the last position

Any encoder feeds it (CLIP's normalised embedding is ClipCap's recipe). The mapper is one of
ClipCap's two: an MLP (D -> P*W/2 -> P*W, tanh), or a small Transformer in which P learned
constants read P vectors projected from the image and become the prefix. With
`freeze_language_model` only the mapper trains and the LM stays in eval mode (no dropout), as in
ClipCap's frozen-GPT-2 recipe.

Tokens come from the LM's own tokenizer (tokenizer.py). There is no start token: the prefix's last
position predicts the first word, as in ClipCap and `generate(inputs_embeds=prefix)`. Teacher
forcing drops the <start> column it is given; decoding's first `step` ignores the start id and
returns the prediction `init_state` made from the prefix. The state (batch first, so beam search
reorders it like any other decoder's):
  first              (B, V)                 the first word's log-probabilities (gone after the first step)
  cache_k, cache_v   (B, layers, heads, t, d)  the LM's key-value cache of the prefix and the words so far
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..tokenizer import HFTokenizer, require_transformers, resolve_language_model


class MLPMapper(nn.Module):
    """ClipCap's MLP: the image vector -> P*W/2 -> P*W, read as P vectors of width W."""

    def __init__(self, dim: int, width: int, length: int):
        super().__init__()
        self.width, self.length = width, length
        hidden = max(1, width * length // 2)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, width * length))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image).view(image.shape[0], self.length, self.width)          # (B, P, W)


class TransformerMapper(nn.Module):
    """ClipCap's Transformer mapper: P vectors projected from the image and P learned constants
    attend to each other; the constants' outputs are the prefix (they learn what to ask the image)."""

    def __init__(self, dim: int, width: int, length: int, layers: int, heads: int):
        super().__init__()
        self.width, self.length = width, length
        self.project = nn.Linear(dim, width * length)
        self.constants = nn.Parameter(torch.randn(length, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        b = image.shape[0]
        x = self.project(image).view(b, self.length, self.width)
        x = torch.cat([x, self.constants.expand(b, -1, -1)], dim=1)                    # (B, 2P, W)
        return self.encoder(x)[:, self.length:]                                       # (B, P, W)


def _cache_arrays(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """A transformers cache -> keys and values stacked over layers, (B, layers, heads, t, d) each."""
    if hasattr(cache, "layers"):                       # transformers >= 4.56
        pairs = [(layer.keys, layer.values) for layer in cache.layers]
    elif hasattr(cache, "key_cache"):                  # DynamicCache before 4.56
        pairs = list(zip(cache.key_cache, cache.value_cache))
    else:                                              # a legacy tuple of (k, v) per layer
        pairs = [tuple(p[:2]) for p in cache]
    return torch.stack([k for k, _ in pairs], dim=1), torch.stack([v for _, v in pairs], dim=1)


def _returned_cache(out):
    cache = getattr(out, "cache", None)                # transformers 5 names it `cache`
    return out.past_key_values if cache is None else cache


def _cache(keys: torch.Tensor, values: torch.Tensor):
    """The inverse of `_cache_arrays`: a DynamicCache holding these keys and values."""
    from transformers import DynamicCache

    pairs = list(zip(keys.unbind(1), values.unbind(1)))
    try:
        return DynamicCache(ddp_cache_data=pairs)
    except TypeError:                                  # older transformers
        return DynamicCache.from_legacy_cache(tuple(pairs))


class PrefixLMDecoder(nn.Module):
    uses_grid = False

    def __init__(self, lm: nn.Module, specials, feature_dim: int, prefix_length: int = 10, mapper: str = "mlp",
                 mapper_layers: int = 8, mapper_heads: int = 8, freeze_language_model: bool = False):
        super().__init__()
        self.lm, self.specials, self.prefix_length = lm, specials, prefix_length
        self.embed = lm.get_input_embeddings()          # the LM's own token vectors (model.freeze_embeddings applies)
        width = self.embed.embedding_dim
        if mapper == "mlp":
            self.mapper = MLPMapper(feature_dim, width, prefix_length)
        else:
            self.mapper = TransformerMapper(feature_dim, width, prefix_length, mapper_layers, mapper_heads)
        # transformers 5 renamed the forward's past_key_values to cache
        self._cache_arg = "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"
        self.context = _context(lm.config)              # the LM's positions; None: any
        self.freeze_language_model = freeze_language_model
        if freeze_language_model:
            lm.requires_grad_(False)
            lm.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_language_model:                  # a frozen LM keeps its dropout off
            self.lm.eval()
        return self

    def prefix(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The picture as the LM's first input vectors, (B, P, W)."""
        return self.mapper(features["global"]).to(self.embed.weight.dtype)

    def forward(self, features: dict[str, torch.Tensor], inputs: torch.Tensor,
                positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher forcing: inputs (B, T) = <start> t1 .. -> logits (B, T, V), or (N, V) at the N true
        `positions`; penalty 0. The <start> column is replaced by the prefix."""
        x = torch.cat([self.prefix(features), self.embed(inputs[:, 1:])], dim=1)      # (B, P+T-1, W)
        if self.context and x.shape[1] > self.context:
            raise ConfigError(f"data.max_caption_length: a caption of {inputs.shape[1] - 1} tokens after the "
                              f"{self.prefix_length}-vector prefix passes the language model's {self.context} positions; "
                              "lower data.max_caption_length or model.prefix_length")
        # the LM's own forward, as init_state and step call it: whatever it does to its logits (a softcap,
        # a scale) applies to training as to decoding
        logits = self.lm(inputs_embeds=x).logits[:, self.prefix_length - 1:]            # (B, T, V)
        if positions is not None:
            logits = logits[positions]                  # (N, V): real tokens only
        return logits, logits.new_zeros(())

    def init_state(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.lm(inputs_embeds=self.prefix(features), use_cache=True)
        keys, values = _cache_arrays(_returned_cache(out))
        return {"first": F.log_softmax(out.logits[:, -1].float(), dim=-1), "cache_k": keys, "cache_v": values}

    def step(self, words: torch.Tensor, state: dict[str, torch.Tensor]):
        """One token (B,) -> log-probabilities of the next (B, V), the new state, no attention."""
        if "first" in state:                            # the start id: the prefix already predicted this step
            return state["first"], {k: v for k, v in state.items() if k != "first"}, None
        if self.context and state["cache_k"].shape[3] >= self.context:
            raise ConfigError(f"decode.max_length: captions this long pass the language model's {self.context} "
                              f"positions after its {self.prefix_length}-vector prefix; lower decode.max_length")
        cache = _cache(state["cache_k"], state["cache_v"])
        out = self.lm(input_ids=words[:, None], use_cache=True, **{self._cache_arg: cache})
        keys, values = _cache_arrays(_returned_cache(out))
        return F.log_softmax(out.logits[:, -1].float(), dim=-1), {"cache_k": keys, "cache_v": values}, None


def _context(lm_config) -> int | None:
    """The LM's positions (GPT-2's n_positions reads as max_position_embeddings); None: any."""
    return getattr(lm_config, "max_position_embeddings", None)


def positions(m) -> int | None:
    """The decoder's positions for model settings `m` (architectures' `positions_of`): the LM's, less
    the prefix, plus the <start> and <end> it never feeds; so its longest caption is context - prefix."""
    folder = resolve_language_model(m.language_model)
    try:
        seen = (folder / "config.json").stat()
        stamp = (seen.st_mtime_ns, seen.st_size)
    except OSError:
        stamp = None                                   # _context_of names the problem
    context = _context_of(folder, stamp)
    return None if context is None else context - m.prefix_length + 2


@functools.lru_cache(maxsize=16)
def _context_of(folder: Path, stamp) -> int | None:
    """The LM's positions from its config.json, read once per folder and version of the file
    (`stamp`: its time and size; `score` asks at every call)."""
    return _context(_lm_config(folder))


def _lm_config(folder: Path):
    """The LM's own configuration from `folder`/config.json, or one line naming the folder."""
    transformers = require_transformers()
    try:
        return transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.language_model: {folder}: cannot read its config.json "
                          f"({str(error).splitlines()[0][:200]})") from None


def load_language_model(name: str) -> nn.Module:
    """model.language_model's causal LM from local files, safetensors weights only (no pickle)."""
    folder = resolve_language_model(name)
    transformers = require_transformers()
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(f"model.language_model: {folder} has no .safetensors weights (showtell loads no pickled "
                          "weights; save the model with save_pretrained)")
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True,
                                                                 use_safetensors=True)
    except (OSError, ValueError) as error:
        raise ConfigError(f"model.language_model: {folder}: cannot load it as a causal language model "
                          f"({str(error).splitlines()[0][:200]})") from None


def language_model_from_config(name: str) -> nn.Module:
    """The LM's architecture from its config.json alone, for a saved run whose model file holds its weights."""
    folder = resolve_language_model(name)
    try:
        return require_transformers().AutoModelForCausalLM.from_config(_lm_config(folder))
    except ValueError as error:                     # a config with no causal-LM class
        raise ConfigError(f"model.language_model: {folder}: cannot build a causal language model from its config.json "
                          f"({str(error).splitlines()[0][:200]})") from None


def build(m, vocab_size: int, encoder, embed_dim: int, pretrained: bool = True) -> PrefixLMDecoder:
    """The decoder for `model` settings `m` over `encoder` (architectures.DECODERS names this function);
    `pretrained=False` (a saved run) builds the LM from its config.json and reads no LM weights."""
    tokenizer = HFTokenizer.load(m.language_model)
    lm = load_language_model(m.language_model) if pretrained else language_model_from_config(m.language_model)
    width = lm.get_input_embeddings().embedding_dim
    if m.mapper == "transformer" and width % m.transformer_heads:
        raise ConfigError(f"model.transformer_heads: the mapper's {m.transformer_heads} heads must divide the "
                          f"language model's width {width}")
    return PrefixLMDecoder(lm, tokenizer.specials, encoder.global_dim, m.prefix_length, m.mapper,
                           m.transformer_layers, m.transformer_heads, m.freeze_language_model)
