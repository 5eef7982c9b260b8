"""Image encoders from timm and open_clip: `model.encoder: timm:NAME` and `clip:NAME`.

    timm:convnext_tiny, timm:vit_small_patch16_224.augreg_in21k   any timm model (pip install 'showtell[timm]')
    clip:ViT-B-32, clip:ViT-L-14                                  open_clip's image tower (pip install 'showtell[clip]')

Each gives what every decoder reads: a pooled vector for NIC and a grid for attention and the
Transformer. timm CNNs: the last stage's map and the model's own pooled pre-logits vector. timm
ViTs: the patch tokens (class and register tokens left out) reshaped to the patch grid, so
attention maps land on the picture, and the model's own pooled vector. CLIP: the patch tokens
after the final layer norm as the grid, and the projected image embedding, L2-normalised, as CLIP
uses it, as the vector.

Weights (`model.encoder_weights`): 'imagenet' (timm: the model's pretrained weights) or an
open_clip pretrained tag ('openai', 'laion2b_s34b_b79k', ...), both downloaded once by the library
into its cache; a local file (safetensors or a state dict; for CLIP a whole CLIP checkpoint or the
image tower's); or 'none' (random). The preprocessing (size, resize, crop, mean, std,
interpolation) is the model's own: timm's `resolve_data_config`, open_clip's preprocess config.
OpenAI's CLIP weights were trained with QuickGELU: with a tag the variant is the one the tag was
trained with ('openai' builds QuickGELU whatever the name says), and a '-quickgelu' name with
weights trained without it is refused. A file is checked against the open_clip_config.json beside
it (as open_clip's hub repos ship it); without one, a warning says to name OpenAI's weights
'clip:NAME-quickgelu'.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..architectures import Weights
from ..data.images import ImageTransform
from ..errors import ConfigError, WeightsError
from .encoder import Backbone, VectorHead
from .weight_files import load_into, read_state_dict

log = logging.getLogger("showtell")
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode")


def _extra(package: str, extra: str, encoder: str):
    try:
        return __import__(package)
    except ImportError:
        raise ConfigError(f"model.encoder={encoder}: needs the {package} package (pip install 'showtell[{extra}]')") from None


def _grid_of_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """Patch tokens (B, L, D) as a (B, D, side, side) map."""
    b, n, d = tokens.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(f"model.encoder: the image tower gives {n} patch tokens, not a square grid")
    return tokens.transpose(1, 2).reshape(b, d, side, side)


class TimmTrunk(nn.Module):
    """A timm model: (grid (B, C, h, w), pooled vector (B, D)) from its features and its own head's pooling."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
        self.channels_last_out = getattr(model, "output_fmt", "NCHW") == "NHWC"

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.model.forward_features(x)
        if not isinstance(features, torch.Tensor) or features.dim() not in (3, 4):
            raise ConfigError("model.encoder: this timm model's features are not one map or one sequence of patch "
                              "tokens (a multi-branch or pooled-token model); choose a CNN or a plain ViT")
        vector = self.model.forward_head(features, pre_logits=True)
        if features.dim() == 3:                          # a ViT's tokens (B, prefix + L, D)
            patches = features.shape[1] - self.prefix
            expected = getattr(getattr(self.model, "patch_embed", None), "num_patches", None)
            if patches < 4 or (expected is not None and not getattr(self.model, "dynamic_img_size", False)
                               and patches != expected):
                raise ConfigError(f"model.encoder: this timm model gives {patches} tokens after its class tokens, "
                                  "not its patch grid; choose a CNN or a plain ViT")
            grid = _grid_of_tokens(features[:, self.prefix:])
        else:
            grid = features.permute(0, 3, 1, 2) if self.channels_last_out else features
        return grid, vector.flatten(1)


class ClipTrunk(nn.Module):
    """open_clip's VisionTransformer: (patch tokens as a grid, the L2-normalised image embedding)."""

    def __init__(self, visual: nn.Module):
        super().__init__()
        visual.output_tokens = True
        self.visual = visual

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.visual(x)
        return _grid_of_tokens(tokens), F.normalize(pooled, dim=-1)


def _timm(name: str, weights: Weights, image_size: int | None, pretrained: bool):
    timm = _extra("timm", "timm", f"timm:{name}")
    load = pretrained and weights.kind == "imagenet"
    try:
        model = timm.create_model(name, pretrained=load)
    except RuntimeError as error:
        if "Unknown model" in str(error):
            raise ConfigError(f"model.encoder: timm has no model {name!r} (timm.list_models() lists them)") from None
        raise WeightsError(f"timm:{name}: could not get its pretrained weights ({str(error).splitlines()[0][:120]}); "
                           "on a machine without internet set model.encoder_weights to a local weights file") from None
    except OSError as error:   # the hub cannot be reached
        raise WeightsError(f"timm:{name}: could not download its pretrained weights ({error.__class__.__name__}); on a "
                           "machine without internet set model.encoder_weights to a local weights file") from None
    if pretrained and weights.kind == "file":
        load_into(model, read_state_dict(weights.value), weights.value)
    config = timm.data.resolve_data_config({}, model=model)
    crop = int(config["input_size"][-1])
    resize = int(math.floor(crop / config.get("crop_pct", 1.0)))
    mode = {"center": "crop", "squash": "squash"}.get(config.get("crop_mode", "center"))
    if mode is None or (mode == "squash" and resize != crop):
        raise ConfigError(f"model.encoder=timm:{name}: its crop mode {config.get('crop_mode')!r} (crop_pct "
                          f"{config.get('crop_pct')}) is not supported; choose another pretrained tag or model")
    if image_size and image_size != crop:
        fixed = getattr(model, "num_prefix_tokens", None) is not None or \
            getattr(getattr(model, "patch_embed", None), "strict_img_size", False)
        if fixed and not getattr(model, "dynamic_img_size", False):
            raise ConfigError(f"data.image_size: timm:{name} works at {crop} px only, got {image_size} (leave it "
                                  "empty, --set data.image_size=, for the model's own size)")
        resize, crop = round(image_size * resize / crop), image_size
    transform = ImageTransform(crop=crop, resize=resize if mode == "crop" else crop, mode=mode,
                               interpolation=config.get("interpolation", "bilinear"))
    return TimmTrunk(model), transform, list(config["mean"]), list(config["std"])


def _tag_variant(open_clip, name: str, weights: str) -> tuple[str, bool, dict]:
    """(the open_clip model to build, whether with QuickGELU, the tag's preprocessing) for an
    open_clip pretrained tag, as the tag was trained; a '-quickgelu' name with a GELU tag is refused."""
    base = name.removesuffix("-quickgelu")
    registered = open_clip.list_pretrained()
    quick_tags = {tag for model, tag in registered if model == base + "-quickgelu"}
    base_tags = {tag for model, tag in registered if model == base}
    if weights in quick_tags:           # registered under the -quickgelu name: trained with QuickGELU
        trained_quick, built = True, base + "-quickgelu"
    elif weights in base_tags:
        trained_quick, built = bool(open_clip.get_pretrained_cfg(base, weights).get("quick_gelu", False)), base
    else:
        known = ", ".join(sorted(quick_tags | base_tags)) or "none"
        raise ConfigError(f"model.encoder_weights: {weights!r} is not an open_clip tag of {base} (tags: {known}; "
                          "or a local weights file, or none)")
    if name.endswith("-quickgelu") and not trained_quick:
        raise ConfigError(f"model.encoder=clip:{name}: the {weights!r} weights were trained with GELU, not "
                          f"QuickGELU; use clip:{base}")
    return built, trained_quick, open_clip.get_pretrained_cfg(built, weights)


def _clip_model(name: str, spec: Weights, pretrained: bool):
    """The CLIP model for `name` with weights `spec` (a tag, a file or none); the QuickGELU rule applied."""
    open_clip = _extra("open_clip", "clip", f"clip:{name}")
    if name not in open_clip.list_models():
        raise ConfigError(f"model.encoder: open_clip has no model {name!r} (open_clip.list_models() lists them)")
    weights, file, tag = spec.value, spec.kind == "file", spec.kind == "tag"
    base = name.removesuffix("-quickgelu")
    built, quick, preprocess = name, name.endswith("-quickgelu"), {}
    if tag:
        built, quick, preprocess = _tag_variant(open_clip, name, weights)
    quiet = logging.getLogger()             # open_clip tells the root logger that a random model is random
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(built, pretrained=weights if pretrained and tag else None,
                                       force_quick_gelu=quick)
    except (RuntimeError, OSError) as error:
        raise WeightsError(f"clip:{name}: could not get the {weights!r} weights ({str(error).splitlines()[0][:120]}); "
                           "on a machine without internet set model.encoder_weights to a local weights file") from None
    finally:
        quiet.setLevel(level)
    if file:
        sidecar = _sidecar_config(weights) if Path(weights).expanduser().is_file() else {}
        preprocess = sidecar.get("preprocess_cfg") or {}
        trained_quick = sidecar.get("model_cfg", {}).get("quick_gelu")
        if trained_quick is not None and bool(trained_quick) != name.endswith("-quickgelu"):
            raise ConfigError(f"model.encoder=clip:{name}: {weights} was trained {'with' if trained_quick else 'without'} "
                              f"QuickGELU (says the open_clip_config.json beside it); use "
                              f"clip:{base}{'-quickgelu' if trained_quick else ''}")
        if pretrained and trained_quick is None and not name.endswith("-quickgelu"):
            log.warning("clip:%s from %s: no open_clip_config.json beside the file says whether its weights were "
                        "trained with QuickGELU; OpenAI's were: for those, name the encoder clip:%s-quickgelu",
                        name, weights, base)
    # the tag's (or the file's) preprocessing whether or not its weights are loaded now: a saved run,
    # rebuilt without them, must see pictures as it was trained on them
    model.visual.preprocess_cfg = {**(getattr(model.visual, "preprocess_cfg", {}) or {}),
                                   **{k: v for k, v in preprocess.items() if k in PREPROCESS_KEYS}}
    if pretrained and file:
        state = read_state_dict(weights)
        if all(k.startswith("module.") for k in state):          # an open_clip training checkpoint (epoch_N.pt)
            state = {k[len("module."):]: v for k, v in state.items()}
        if any(k.startswith("visual.") for k in state):          # a whole CLIP checkpoint: its image tower
            state = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        load_into(model.visual, state, weights)
    return model


def _sidecar_config(weights: str) -> dict:
    """open_clip_config.json beside a weights file (as the Hugging Face hub's open_clip repos ship it), or {}."""
    import json

    path = Path(weights).expanduser().parent / "open_clip_config.json"
    try:
        config = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path}: cannot read it ({error.__class__.__name__})") from None
    return config if isinstance(config, dict) else {}


def _clip(name: str, weights: Weights, image_size: int | None, pretrained: bool):
    visual = _clip_model(name, weights, pretrained).visual
    if not hasattr(visual, "_global_pool") or getattr(visual, "attn_pool", None) is not None:
        raise ConfigError(f"model.encoder=clip:{name}: only open_clip's own ViT image towers are supported (not "
                          "ResNet, timm-based or attention-pooled ones such as CoCa's)")
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = cfg.get("size", visual.image_size)
    crop = int(size[-1] if isinstance(size, (tuple, list)) else size)
    if image_size and image_size != crop:
        raise ConfigError(f"data.image_size: clip:{name} works at {crop} px only, got {image_size} (leave it "
                          "empty, --set data.image_size=, for the model's own size)")
    mode = {"shortest": "crop", "squash": "squash"}.get(cfg.get("resize_mode", "shortest"))
    if mode is None:
        raise ConfigError(f"model.encoder=clip:{name}: its resize mode {cfg['resize_mode']!r} is not supported")
    transform = ImageTransform(crop=crop, resize=crop, mode=mode, interpolation=cfg.get("interpolation", "bicubic"))
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    return ClipTrunk(visual), transform, list(cfg.get("mean", OPENAI_DATASET_MEAN)), list(cfg.get("std", OPENAI_DATASET_STD))


def _model_name(name: str) -> str:
    library, _, model = name.partition(":")
    if not model:
        raise ConfigError(f"model.encoder: {name!r} names no model after '{library}:'")
    return model


def build_timm(name: str, weights: Weights, image_size: int | None, pretrained: bool) -> Backbone:
    """The `timm:NAME` family (architectures.ENCODER_FAMILIES). `pretrained=False` builds the
    architecture only (a saved run supplies every weight)."""
    trunk, transform, mean, std = _timm(_model_name(name), weights, image_size, pretrained)
    return Backbone(trunk, VectorHead(), transform, mean, std)


def build_clip(name: str, weights: Weights, image_size: int | None, pretrained: bool) -> Backbone:
    """The `clip:NAME` family (architectures.ENCODER_FAMILIES), as build_timm."""
    trunk, transform, mean, std = _clip(_model_name(name), weights, image_size, pretrained)
    return Backbone(trunk, VectorHead(), transform, mean, std)
