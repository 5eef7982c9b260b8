"""The decoder table and the encoder families (showtell/architectures.py): read without torch, and
what each row says is what the model it builds does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from showtell.architectures import DECODERS, Weights, encoder_family, parse_weights
from showtell.config import load_config
from showtell.errors import ConfigError


def test_the_tables_config_and_onnx_runtime_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
            "import showtell.architectures, showtell.config, showtell.inference.onnx_runtime as o\n"
            "assert o.DECODERS == ('nic', 'attention'), o.DECODERS")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", list(DECODERS))
def test_each_row_builds_a_decoder_that_does_what_the_row_says(name, tmp_path):
    from showtell.models.caption_model import build_model
    from showtell.vocab import build_vocabulary

    row = DECODERS[name]
    extra = []
    if name == "prefix-lm":   # a tiny GPT-2 made here (tests/test_prefix_lm.py)
        pytest.importorskip("transformers")
        from test_prefix_lm import _save_lm

        extra = [f"model.language_model={_save_lm(tmp_path)}", "model.prefix_length=2"]
    config = load_config(None, ["model.encoder=small", f"model.decoder={name}", "model.hidden_dim=16",
                                "model.embed_dim=8", "model.attention_dim=8", "model.transformer_ff_dim=16",
                                "data.image_size=32", *extra])
    model = build_model(config, build_vocabulary([["a", "b"]], 1))
    assert model.decoder.uses_grid == row.uses_grid
    assert set(model.encode(__import__("torch").zeros(1, 3, 32, 32, dtype=__import__("torch").uint8))) >= set(row.features)
    if name == "transformer":
        from showtell.models.transformer import MAX_POSITIONS

        assert row.max_scored_words(config.model) == MAX_POSITIONS - 2 == 254
    assert row.describe(config.to_dict()["model"]).count("None") == 0


def test_top_p_has_one_range_and_a_config_refuses_zero():
    with pytest.raises(ConfigError, match="decode.top_p: 0.0 must be above 0"):
        load_config(None, ["decode.top_p=0"])
    assert load_config(None, ["decode.top_p=1"]).decode.top_p == 1.0


def test_one_reading_of_encoder_weights(tmp_path):
    assert [f.name for f in map(encoder_family, ("small", "timm:x", "clip:y", "vgg16"))] == \
        ["small", "timm", "clip", "torchvision"]
    assert parse_weights("small", "auto") == Weights("none", "none")
    assert parse_weights("clip:ViT-B-32", "auto") == Weights("tag", "openai")
    assert parse_weights("clip:ViT-B-32", "w.safetensors") == Weights("file", "w.safetensors")
    assert parse_weights("resnet18", "openai") == Weights("file", "openai")
    assert parse_weights("timm:x", "auto") == Weights("imagenet", "imagenet")
    for encoder in ("small", "clip:ViT-B-32"):
        with pytest.raises(ConfigError, match="model.encoder_weights: .*"):
            parse_weights(encoder, "imagenet")
