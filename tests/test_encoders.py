"""Pretrained encoders: weights from files and torchvision's cache, the offline message, the
transform taken from the weights, and both outputs (vector and grid) of every backbone family."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file

from showtell.errors import ConfigError, WeightsError
from showtell.models import encoder as encoder_module
from showtell.models.encoder import Encoder, imagenet_weights_file


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _offline(*args, **kwargs):
    raise urllib.error.URLError("no network")


@pytest.mark.parametrize("name, suffix", [("resnet18", ".pth"), ("vgg16", ".safetensors")])
def test_encoder_weights_from_a_state_dict_file(tmp_path, name, suffix):
    torch.manual_seed(1)
    source = torchvision.models.get_model(name, weights=None)
    path = tmp_path / f"{name}{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.save(state, path) if suffix == ".pth" else save_file(state, str(path))
    encoder = Encoder(name, str(path))
    first_conv = "trunk.0.weight"
    expected = state["conv1.weight"] if name == "resnet18" else state["features.0.weight"]
    assert torch.equal(encoder.state_dict()[first_conv], expected)
    if name == "vgg16":  # fc7 comes along too: the write-up's 4096-d image vector
        assert torch.equal(encoder.state_dict()["head.fc.3.weight"], state["classifier.3.weight"])


def test_wrong_or_broken_weight_files_are_named(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(WeightsError, match="r18.pth: weights do not fit the model"):
        Encoder("resnet34", str(path))
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 20)
    with pytest.raises(WeightsError, match="broken.safetensors: cannot read state dict"):
        Encoder("resnet18", str(broken))
    with pytest.raises(WeightsError, match="nowhere.pth: model.encoder_weights file not found"):
        Encoder("resnet18", str(tmp_path / "nowhere.pth"))


def test_offline_without_cached_imagenet_weights_names_the_file_to_place(hub_dir, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    url, cached = imagenet_weights_file("vgg16")
    assert url == "https://download.pytorch.org/models/vgg16-397923af.pth"
    assert cached == hub_dir / "checkpoints" / "vgg16-397923af.pth"
    with pytest.raises(WeightsError) as error:
        Encoder("vgg16", "imagenet")
    message = str(error.value)
    assert url in message and str(cached) in message and "\n" not in message


def test_imagenet_weights_come_from_torchvisions_cache(hub_dir, monkeypatch):
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)  # must not be needed
    url, cached = imagenet_weights_file("resnet18")
    cached.parent.mkdir(parents=True)
    torch.manual_seed(2)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cached)
    encoder = Encoder("resnet18", "imagenet")
    assert torch.equal(encoder.state_dict()["trunk.0.weight"], state["conv1.weight"])


@pytest.mark.parametrize("name", ["vgg16", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_b_16"])
def test_transform_is_the_weights_own(name):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    reference = weights.transforms()
    image = Image.new("RGB", (301, 233))
    image.putdata([((x * 7) % 256, (y * 3) % 256, (x + y) % 256) for y in range(233) for x in range(301)])
    encoder = Encoder(name, "none")
    ours = encoder.normalize(encoder.transform(image).unsqueeze(0))[0]
    theirs = reference(image)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert encoder.transform.crop == reference.crop_size[0] and encoder.transform.resize == reference.resize_size[0]
    assert encoder.transform.interpolation == reference.interpolation.value
    assert encoder.mean.flatten().tolist() == pytest.approx(list(reference.mean))


@pytest.mark.parametrize("name, grid, dims", [
    ("vgg16", (196, 512), 4096), ("resnet50", (49, 2048), 2048), ("efficientnet_b0", (49, 1280), 1280),
    ("convnext_tiny", (49, 768), 768), ("vit_b_16", (196, 768), 768), ("resnet101", (49, 2048), 2048),
    ("small", (16, 480), 960), ("small_narrow", (16, 240), 480),   # hypercolumns; each stage's mean and max
])
def test_one_encoder_gives_the_vector_and_the_grid(name, grid, dims):
    encoder = Encoder(name, "none").eval()
    with torch.no_grad():
        out = encoder(torch.zeros(1, 3, encoder.transform.crop, encoder.transform.crop, dtype=torch.uint8))
    assert out["grid"].shape == (1, *grid) and out["global"].shape == (1, dims)
    assert (encoder.grid_size, encoder.grid_dim, encoder.global_dim) == (grid[0], grid[1], dims)


def test_unknown_encoder_and_mismatched_size():
    with pytest.raises(ConfigError, match="unknown encoder 'vgg17'"):
        Encoder("vgg17")
    with pytest.raises(ConfigError, match="vit_b_16 works at 224 px only"):
        Encoder("vit_b_16", "none", image_size=320)
    with pytest.raises(ConfigError, match="multiple of 16"):
        Encoder("small", "none", image_size=70)
    assert encoder_module.Encoder("resnet18", "none", image_size=160).transform.resize == round(160 * 256 / 224)
