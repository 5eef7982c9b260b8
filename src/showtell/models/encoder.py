"""The image encoder: a CNN that turns pictures into a vector (for NIC) and a grid (for attention).

`Encoder(images)` takes uint8 (or [0, 1] float) images of shape (B, 3, S, S) and returns
`{"global": (B, Dg), "grid": (B, L, Dc)}`: the pooled image vector and the spatial feature map
flattened to L = h*w locations (VGG16 conv5 at 224 px: 14x14x512; ResNet: 7x7x2048).

Backbones come from an encoder family (architectures.ENCODER_FAMILIES: the small CNN and
torchvision here, timm and open_clip in hub_encoders.py as `timm:NAME`, `clip:NAME`). Each family's
builder gives a `Backbone`: trunk, head, picture transform and statistics, the way torchvision's
weights carry their own transform. Weights (`architectures.parse_weights`, the one reading of
model.encoder_weights) come from torchvision's weights API (and its download cache), a library's
pretrained tag, a local state dict, or nothing (random). The normalisation and geometry come from
the weights' own metadata, so preprocessing cannot mismatch the network.
`small` is a compact CNN for training from scratch on small pictures; it sees two extra input
channels holding each pixel's x and y (CoordConv), so its features know where things are.
`small_narrow` is the same CNN with half the channels: 2.4x the NIC training steps a second at
96 px, and on the synthetic scenes it names their shapes better in the same minutes (the synth
preset's NIC uses it; docs/evaluation.md).
"""

from __future__ import annotations

import urllib.error
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from ..architectures import Weights, encoder_family, parse_weights
from ..data.images import ImageTransform
from ..errors import ConfigError, WeightsError
from .weight_files import load_into, read_state_dict

SMALL_DEFAULT_SIZE = 64
SMALL_CHANNELS = {"small": (32, 64, 128, 256), "small_narrow": (16, 32, 64, 128)}   # each stage's output


class SmallCNN(nn.Module):
    """Four stride-2 stages of two 3x3 convolutions on S x S pictures. Colour is plain in the early
    stages, shape and layout in the late ones, so both outputs draw on every stage:

    - the grid: every stage average-pooled to the last stage's (S/16) x (S/16) locations and
      stacked (hypercolumns): 32 + 64 + 128 + 256 = 480 channels at each of 16 places for a 64 px
      picture (`small`; 240 for `small_narrow`), so an attended place carries its colour as well as
      its shape;
    - the vector: each stage's average and maximum over all locations, 960 numbers (480).

    With only the last stage, learning colour from captions stalls for minutes. The 4 x 4 grid at
    64 px was chosen over 8 x 8, which scored lower on the synthetic scenes (README)."""

    def __init__(self, channels=SMALL_CHANNELS["small"]):
        super().__init__()
        stages, cin = [], 5  # RGB + the x and y coordinate channels
        for cout in channels:
            stages.append(nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = sum(channels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        x = torch.cat([x, xs, ys], dim=1).contiguous(memory_format=torch.channels_last)
        outputs, pooled = [], []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
            pooled += [x.mean(dim=(2, 3)), x.amax(dim=(2, 3))]
        side = outputs[-1].shape[-2:]                                             # S/16 x S/16
        resized = [F.adaptive_avg_pool2d(o, side) for o in outputs[:-1]]
        grid = torch.cat([*resized, outputs[-1]], dim=1)                          # (B, 480, S/16, S/16)
        return grid, torch.cat(pooled, dim=1)                                     # (B, 960)


class GridTrunk(nn.Sequential):
    """A torchvision backbone's convolutional layers: the grid, and no vector of its own (the head
    pools one). A Sequential subclass, so state dict keys stay those of the plain layers."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return super().forward(x), None


class VectorHead(nn.Module):
    """For trunks that make their own image vector (the small CNN's pooled stages, ViT's class
    token): the vector as it comes."""

    def forward(self, grid: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
        return vector


class PoolHead(nn.Module):
    """Average pooling followed by (part of) the backbone's own classifier, which gets the pooled
    (B, C, 1, 1) map (ConvNeXt's layer norm wants it so) and ends flattened."""

    def __init__(self, tail: nn.Module | None = None, pre=None):
        super().__init__()
        self.tail = tail if tail is not None else nn.Identity()
        self.pre = pre

    def forward(self, grid: torch.Tensor, vector=None) -> torch.Tensor:
        if self.pre is not None:
            grid = self.pre(grid)
        return torch.flatten(self.tail(F.adaptive_avg_pool2d(grid, 1)), 1)


class VGGHead(nn.Module):
    """conv5 -> last max-pool -> 7x7 average pool -> fc6 -> fc7: the 4096-d vector of the write-up."""

    def __init__(self, model):
        super().__init__()
        self.pool, self.avgpool = model.features[-1], model.avgpool
        self.fc = nn.Sequential(*list(model.classifier.children())[:-1])

    def forward(self, grid: torch.Tensor, vector=None) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.pool(grid)), 1))


class ViTTrunk(nn.Module):
    """torchvision ViT: patch tokens as the grid, the class token as the global vector."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        tokens = m._process_input(x)
        tokens = torch.cat([m.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = m.encoder(tokens)  # (B, 1 + L, D), layer-normed
        side = int((tokens.shape[1] - 1) ** 0.5)
        grid = tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], -1, side, side)
        return grid, tokens[:, 0]


def _carve(name: str, model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """Split a torchvision classifier into (trunk: pictures -> (grid, vector or None),
    head: (grid, vector) -> global vector)."""
    if name.startswith("vgg"):
        return GridTrunk(*list(model.features.children())[:-1]), VGGHead(model)
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        trunk = GridTrunk(model.conv1, model.bn1, model.relu, model.maxpool,
                          model.layer1, model.layer2, model.layer3, model.layer4)
        return trunk, PoolHead()
    if name.startswith("regnet"):
        return GridTrunk(model.stem, model.trunk_output), PoolHead()
    if name.startswith("convnext"):
        head = PoolHead(nn.Sequential(*list(model.classifier.children())[:-1]))
        return GridTrunk(OrderedDict(model.features.named_children())), head
    if name.startswith("densenet"):
        return GridTrunk(OrderedDict(model.features.named_children())), PoolHead(pre=F.relu)
    if name.startswith("swin"):
        return GridTrunk(model.features, model.norm, model.permute), PoolHead()
    if name.startswith("vit"):
        return ViTTrunk(model), VectorHead()
    if name.startswith(("efficientnet", "mobilenet", "alexnet", "squeezenet")):
        return GridTrunk(OrderedDict(model.features.named_children())), PoolHead()
    raise ConfigError(f"model.encoder: {name} is a torchvision model showtell cannot take apart; use one of "
                      "vgg*, resnet*, resnext*, wide_resnet*, regnet*, efficientnet*, mobilenet*, convnext*, "
                      "densenet*, swin*, vit*, alexnet, squeezenet*, 'small' or 'small_narrow'")


def _default_weights(name: str):
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError):
        return None


def imagenet_weights_file(name: str) -> tuple[str, Path]:
    """The download address of a backbone's ImageNet weights and where torchvision caches them."""
    weights = _default_weights(name)
    if weights is None:
        raise ConfigError(f"model.encoder_weights: torchvision has no ImageNet weights for {name}")
    return weights.url, Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    url, cached = imagenet_weights_file(name)
    if cached.is_file():
        return read_state_dict(cached)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as error:
        reason = getattr(error, "reason", None) or error.__class__.__name__
        raise WeightsError(
            f"could not download the ImageNet weights of {name} ({reason}); on a machine without internet, "
            f"download {url} elsewhere and place it at {cached}, or set model.encoder_weights to a state dict file"
        ) from None


@dataclass
class Backbone:
    """What an encoder family builds: the trunk (pictures -> (grid (B, C, h, w), vector or None)),
    the head ((grid, vector) -> (B, Dg)), and how pictures must be prepared for its weights."""

    trunk: nn.Module
    head: nn.Module
    transform: ImageTransform
    mean: list[float]
    std: list[float]


def build_small(name: str, weights: Weights, image_size: int | None, pretrained: bool) -> Backbone:
    size = image_size or SMALL_DEFAULT_SIZE
    if size % 16:
        raise ConfigError(f"data.image_size: the small encoder needs a multiple of 16, got {size}")
    backbone = Backbone(SmallCNN(SMALL_CHANNELS[name]), VectorHead(), ImageTransform(crop=size, resize=size, mode="squash"),
                        [0.5] * 3, [0.5] * 3)
    if pretrained and weights.kind == "file":
        load_into(nn.ModuleDict({"trunk": backbone.trunk, "head": backbone.head}), read_state_dict(weights.value),
                  weights.value)
    return backbone


def build_torchvision(name: str, weights: Weights, image_size: int | None, pretrained: bool) -> Backbone:
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"model.encoder: unknown encoder {name!r} (use 'small', 'small_narrow' or a torchvision "
                          "classification model such as vgg16, resnet50, efficientnet_b0, vit_b_16)")
    meta = _default_weights(name)
    model = torchvision.models.get_model(name, weights=None)
    if pretrained and weights.kind == "imagenet":
        load_into(model, _imagenet_state_dict(name), f"ImageNet weights of {name}")
    elif pretrained and weights.kind == "file":
        load_into(model, read_state_dict(weights.value), weights.value)
    preset = meta.transforms() if meta is not None else None
    crop = preset.crop_size[0] if preset else 224
    resize = preset.resize_size[0] if preset else 256
    if image_size and image_size != crop:
        if name.startswith(("vit", "swin")):
            raise ConfigError(f"data.image_size: {name} works at {crop} px only, got {image_size}")
        resize, crop = round(image_size * resize / crop), image_size
    interpolation = preset.interpolation.value if preset else "bilinear"
    transform = ImageTransform(crop=crop, resize=resize, mode="crop", interpolation=interpolation)
    mean = list(preset.mean) if preset else [0.485, 0.456, 0.406]
    std = list(preset.std) if preset else [0.229, 0.224, 0.225]
    trunk, head = _carve(name, model)
    return Backbone(trunk, head, transform, mean, std)


class Encoder(nn.Module):
    def __init__(self, name: str, weights: str = "none", image_size: int | None = None, pretrained: bool = True):
        """`pretrained=False` builds the architecture only (a saved run supplies all weights)."""
        super().__init__()
        self.name = name
        self.frozen = False
        parsed = parse_weights(name, weights)
        built = encoder_family(name).build(name, parsed, image_size, pretrained)
        self.trunk = built.trunk.to(memory_format=torch.channels_last)  # oneDNN and cuDNN convolutions prefer NHWC
        self.head, self.transform, mean, std = built.head, built.transform, built.mean, built.std
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        with torch.no_grad():
            was_training = self.training
            self.eval()
            try:
                probe = self(torch.zeros(1, 3, self.transform.crop, self.transform.crop, dtype=torch.uint8))
            except (RuntimeError, AssertionError) as error:   # "Output size is too small" and its kin; timm's size asserts
                raise ConfigError(f"data.image_size: {self.transform.crop} px is too small for the {name} encoder "
                                  f"({str(error).splitlines()[0][:80]}); use a larger data.image_size or leave it "
                                  "empty for the encoder's own size") from None
            self.train(was_training)
        self.global_dim = probe["global"].shape[-1]
        self.grid_dim = probe["grid"].shape[-1]
        self.grid_size = probe["grid"].shape[1]

    def freeze(self, frozen: bool = True) -> None:
        """A frozen encoder keeps its weights and its batch-norm statistics."""
        self.frozen = frozen
        self.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            super().train(False)
        return self

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        grid, vector = self.trunk(self.normalize(images).contiguous(memory_format=torch.channels_last))
        vector = self.head(grid, vector)                    # grid (B, C, h, w) -> (B, Dg)
        out = {"global": vector, "grid": grid.flatten(2).transpose(1, 2)}  # grid: (B, h*w, C)
        if self.frozen:
            # a frozen encoder's features are what the feature cache stores (float16), so training
            # from the cache and from the pictures sees the very same numbers
            out = {k: v.to(torch.float16).float() for k, v in out.items()}
        return out
