"""What showtell can build, as plain data: one row per decoder and one per encoder family.

Everything that must know a decoder or an encoder family without building it reads it here: the
config's choices and checks, `prepare` and the feature cache (which outputs to keep), the ONNX
runtime (which decoders export), `train` and `Captioner.logprob` (the longest caption a decoder
reads or scores, `check_lengths`) and
the model card (its tag and its one-line description). The module that builds one is named by a
dotted path and imported only when a model is built, so this file needs no torch. Adding a
decoder is one model file with a `build` function plus one row of `DECODERS`; an encoder family
is one builder plus one row of `ENCODER_FAMILIES`.

A basic: imports nothing of showtell but errors.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


def _load(path: str):
    """'package.module:function' -> the function (its module imported now)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


class _Missing(dict):
    def __missing__(self, key):     # a setting an old run's config.json lacks reads as None, as dict.get did
        return None


# --- decoders --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Decoder:
    """A decoder's traits. `builds` names `build(model_config, vocab_size, encoder, embed_dim, pretrained)
    -> nn.Module`; `pretrained=False` (a saved run, whose model file holds every weight) fetches no
    pretrained part (a language model is built from its config.json)."""

    name: str
    builds: str                    # "showtell.models.nic:build"
    uses_grid: bool                # attends over the encoder's grid: the cache keeps it, attention maps exist
    onnx: bool                     # its state keeps its shape from word to word, so one step is an ONNX graph
    positions: int | None          # longest sequence (words + <start>/<end>) its positions cover; None: any
    card_tag: str                  # the model card's tag
    card_line: str                 # the model card's description, formatted with the model settings
    check: Callable | None = None  # check(model_config, where): rules over several settings, ConfigError
    lm_tokenizer: bool = False     # its tokens come from model.language_model's tokenizer, not a word vocabulary
    positions_of: str | None = None   # 'module:function' giving `positions` for the model settings (an LM's context)
    positions_note: str = ""       # what bounds its positions, for the refusals of check_lengths

    @property
    def features(self) -> tuple[str, ...]:
        """What a feature cache must hold for it."""
        return ("global", "grid") if self.uses_grid else ("global",)

    @property
    def unit(self) -> str:
        """What its captions are counted in."""
        return "tokens" if self.lm_tokenizer else "words"

    def sequence_positions(self, model_config) -> int | None:
        """Its positions with these model settings: `positions`, or what `positions_of` computes."""
        return _load(self.positions_of)(model_config) if self.positions_of else self.positions

    def max_scored_words(self, model_config) -> int | None:
        """The longest caption it reads, writes or scores with these model settings, in words (tokens
        for an LM's tokenizer): its positions less <start> and <end>; None: any."""
        positions = self.sequence_positions(model_config)
        return None if positions is None else positions - 2

    def build(self, model_config, vocab_size: int, encoder, embed_dim: int, pretrained: bool = True):
        return _load(self.builds)(model_config, vocab_size, encoder, embed_dim, pretrained)

    def describe(self, model: dict) -> str:
        """The card's line for a run's `model` settings (a config.json section)."""
        return self.card_line.format_map(_Missing(model))


def _check_transformer(m, where: str = "") -> None:
    if m.hidden_dim % m.transformer_heads:
        raise ConfigError(f"{where}model.hidden_dim: the transformer's width {m.hidden_dim} must be a multiple of "
                          f"model.transformer_heads ({m.transformer_heads})")
    if not -m.transformer_layers <= m.transformer_attention_layer < m.transformer_layers:
        raise ConfigError(f"{where}model.transformer_attention_layer: {m.transformer_attention_layer} names no layer "
                          f"of {m.transformer_layers} (0 .. {m.transformer_layers - 1}, or -1 for the last)")


def _check_prefix_lm(m, where: str = "") -> None:
    # an empty model.language_model is refused where it is read (tokenizer.resolve_language_model), so that
    # --set model.decoder=prefix-lm alone still reads as a config
    if m.word_embeddings:   # the LM brings its own token vectors
        raise ConfigError(f"{where}model.word_embeddings: word vectors do not apply to model.decoder=prefix-lm "
                          "(the language model has its own token embeddings); leave it empty")


_SIZES = "word embeddings {embed_dim}, dropout {dropout}"
DECODERS = {d.name: d for d in (
    Decoder("nic", "showtell.models.nic:build", uses_grid=False, onnx=True, positions=None, card_tag="nic",
            card_line="Show and Tell (NIC): an LSTM conditioned on the image vector; " + _SIZES
                      + ", hidden size {hidden_dim}, {num_layers} layer(s)"),
    Decoder("attention", "showtell.models.attention:build", uses_grid=True, onnx=True, positions=None,
            card_tag="show-attend-and-tell",
            card_line="Show, Attend and Tell: an LSTM that attends over the encoder's spatial grid at every word; "
                      + _SIZES + ", hidden size {hidden_dim}, attention size {attention_dim}"),
    # 256 positions: decode.max_length (<= 200) + the <end> step, with room to score longer captions
    Decoder("transformer", "showtell.models.transformer:build", uses_grid=True, onnx=False, positions=256,
            card_tag="transformer",
            card_line="a pre-norm Transformer decoder with cross-attention over the encoder's grid; " + _SIZES
                      + ", width {hidden_dim}, {transformer_layers} layers, {transformer_heads} heads, "
                      "feed-forward {transformer_ff_dim}",
            check=_check_transformer),
    # the LM's context bounds its positions: read from the LM's config.json by positions_of
    Decoder("prefix-lm", "showtell.models.prefix_lm:build", uses_grid=False, onnx=False, positions=None,
            card_tag="clipcap",
            card_line="a pretrained language model ({language_model}) continuing the picture given as {prefix_length} "
                      "input vectors by a {mapper} mapper (ClipCap); language model frozen: {freeze_language_model}",
            check=_check_prefix_lm, lm_tokenizer=True, positions_of="showtell.models.prefix_lm:positions",
            positions_note="the language model's positions less model.prefix_length"),
)}


def check_lengths(config, longest_caption: Callable[[], int]) -> None:
    """Before a run is made: the decoder's positions hold the longest training caption (`longest_caption()`,
    in its unit, computed only for a decoder with a bound) and decode.max_length words, else a ConfigError."""
    traits = decoder(config.model.decoder)
    most = traits.max_scored_words(config.model)
    if most is None:
        return
    note = f" ({traits.positions_note})" if traits.positions_note else ""
    longest = longest_caption()
    if longest > most:
        raise ConfigError(f"data.max_caption_length: the longest training caption is {longest} {traits.unit}, more than "
                          f"the {max(most, 0)} a {traits.name} decoder with these settings reads{note}; lower "
                          "data.max_caption_length" + (" or model.prefix_length" if traits.lm_tokenizer else ""))
    if config.decode.max_length > most:
        raise ConfigError(f"decode.max_length: {config.decode.max_length} {traits.unit} pass the {max(most, 0)} a "
                          f"{traits.name} decoder with these settings writes{note}; lower decode.max_length")


def decoder(name: str) -> Decoder:
    """The row of `name` (a config's choices guarantee one)."""
    return DECODERS[name]


def card_decoder(model: dict) -> Decoder:
    """The row the model card describes for a run's `model` settings (NIC when none is named)."""
    return DECODERS.get(model.get("decoder"), DECODERS["nic"])


# --- encoder families ------------------------------------------------------------------------------
@dataclass(frozen=True)
class EncoderFamily:
    """An encoder family's traits. `builds` names `build(name, weights: Weights, image_size, pretrained)
    -> models.encoder.Backbone` (trunk, head, transform, mean and std)."""

    name: str
    builds: str
    prefix: str | None       # 'timm:', 'clip:'; None: matched by `names` or, for torchvision, anything else
    names: tuple[str, ...]   # exact names it answers to ('small')
    auto_weights: str        # what model.encoder_weights=auto means
    imagenet: str | None     # why 'imagenet' is refused, or None when the family has ImageNet weights
    tags: bool = False       # any other word is a pretrained tag of the library, not a file

    def build(self, name: str, weights: Weights, image_size: int | None, pretrained: bool):
        return _load(self.builds)(name, weights, image_size, pretrained)


ENCODER_FAMILIES = (
    EncoderFamily("small", "showtell.models.encoder:build_small", None, ("small", "small_narrow"), "none",
                  imagenet="the small encoder has no ImageNet weights"),
    EncoderFamily("timm", "showtell.models.hub_encoders:build_timm", "timm:", (), "imagenet", imagenet=None),
    EncoderFamily("clip", "showtell.models.hub_encoders:build_clip", "clip:", (), "openai",
                  imagenet="clip: encoders take an open_clip pretrained tag (openai, laion2b_s34b_b79k, ...), a file "
                           "or none, not 'imagenet'", tags=True),
    EncoderFamily("torchvision", "showtell.models.encoder:build_torchvision", None, (), "imagenet", imagenet=None),
)


def encoder_family(name: str) -> EncoderFamily:
    """The family of `model.encoder`: by exact name, then by prefix, else torchvision."""
    for family in ENCODER_FAMILIES:
        if name in family.names or (family.prefix and name.startswith(family.prefix)):
            return family
    return ENCODER_FAMILIES[-1]


WEIGHT_FILE_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


@dataclass(frozen=True)
class Weights:
    """What `model.encoder_weights` means for an encoder: kind 'none', 'imagenet', 'tag' (a library's
    pretrained tag, in `value`) or 'file' (a local state dict, its path in `value`)."""

    kind: str
    value: str


def check_weights_spelling(weights: str, where: str = "") -> None:
    """What any encoder refuses: an empty `model.encoder_weights` (checked as soon as it is set)."""
    if not weights.strip():
        raise ConfigError(f"{where}model.encoder_weights: expected 'imagenet', 'none' or a file path")


def parse_weights(encoder: str, weights: str, where: str = "") -> Weights:
    """The one reading of `model.encoder_weights` for `model.encoder` ('auto' resolved), or a ConfigError."""
    family = encoder_family(encoder)
    check_weights_spelling(weights, where)
    if weights == "auto":
        weights = family.auto_weights
    if weights in ("none", "imagenet"):
        if weights == "imagenet" and family.imagenet:
            hint = "; use 'none' or a file" if not family.tags else ""
            raise ConfigError(f"{where}model.encoder_weights: {family.imagenet}{hint}")
        return Weights(weights, weights)
    if family.tags and not (Path(weights).suffix in WEIGHT_FILE_SUFFIXES or Path(weights).expanduser().is_file()):
        return Weights("tag", weights)
    return Weights("file", weights)
