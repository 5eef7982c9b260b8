"""The typed config: defaults, YAML files, presets, --set overrides and one-line errors."""

from __future__ import annotations

import json

import pytest

from showtell.config import Config, all_settings, config_from_dict, load_config
from showtell.errors import ConfigError

REQUIRED = ["model.encoder", "model.encoder_weights", "model.decoder", "model.image_injection", "model.embed_dim",
            "model.hidden_dim", "data.image_size", "train.epochs", "train.batch_size", "train.lr"]


def test_the_documented_settings_exist_with_help():
    settings = all_settings()
    for name in REQUIRED:
        assert name in settings
    assert all(f.metadata["help"] for f in settings.values())
    assert Config().model.encoder == "vgg16" and Config().model.image_injection == "init_state"


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_dim: 128\n  image_injection: first_input\ntrain:\n  lr: 0.01\n")
    config = load_config(str(path), ["train.lr=0.5", "data.image_size=96", "model.freeze_encoder=false"])
    assert config.model.hidden_dim == 128 and config.model.image_injection == "first_input"
    assert config.train.lr == 0.5 and config.data.image_size == 96 and config.model.freeze_encoder is False


def test_preset_and_round_trip_through_json():
    config = load_config("synth", ["train.epochs=3"])
    assert config.model.encoder == "small_narrow" and config.train.epochs == 3
    again = config_from_dict(json.loads(config.to_json()), "config.json")
    assert again == config


def test_a_preset_gives_one_decoder_its_own_settings_under_what_set_gives():
    # synth: NIC decodes greedily, attention with beam 3 (measured in docs/evaluation.md)
    assert load_config("synth").decode.beam_size == 1
    assert load_config("synth", ["model.decoder=attention"]).decode.beam_size == 3
    assert load_config("synth", ["model.decoder=attention", "decode.beam_size=5"]).decode.beam_size == 5
    # NIC's CNN is the narrow one, trained 60 epochs (about 8 minutes at 96 px); attention keeps the wide one
    nic, attention = load_config("synth").model, load_config("synth", ["model.decoder=attention"])
    assert (nic.encoder, load_config("synth").train.epochs) == ("small_narrow", 60)
    assert (attention.model.encoder, attention.train.epochs) == ("small", 30)
    assert load_config("synth", ["model.encoder=small"]).model.encoder == "small"


def test_by_decoder_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  decoder: attention\n  hidden_dim: 90\ndecode:\n  beam_size: 2\nby_decoder:\n"
                    "  attention:\n    decode:\n      beam_size: 4\n"
                    "  transformer:\n    model:\n      transformer_heads: 3\n  nic:\n")
    assert load_config(str(path)).decode.beam_size == 4                              # the file's own decoder
    assert load_config(str(path), ["model.decoder=nic"]).decode.beam_size == 2
    # the decoder's section mends a rule the file's other settings break for it (90 is no multiple of 4 heads)
    transformer = load_config(str(path), ["model.decoder=transformer"]).model
    assert (transformer.hidden_dim, transformer.transformer_heads) == (90, 3)
    for body, message in [      # every decoder's section is checked, chosen or not (the default decoder is nic)
        ("by_decoder:\n  atention:\n    decode:\n      beam_size: 4\n", "by_decoder.'atention': no such decoder"),
        ("by_decoder:\n  transformer:\n    decode:\n      beem_size: 4\n",
         "by_decoder.transformer: unknown setting 'decode.beem_size'"),
        ("by_decoder:\n  attention:\n    decode:\n      beam_size: 0\n",
         "by_decoder.attention: decode.beam_size: 0 is below the minimum 1"),
        ("by_decoder:\n  attention:\n    modle:\n      hidden_dim: 4\n", "by_decoder.attention: unknown setting 'modle'"),
        ("by_decoder:\n  nic:\n    model:\n      decoder: attention\n", "model.decoder cannot depend on the decoder"),
        ("by_decoder: [nic]\n", "by_decoder must map decoder names to sections"),
        ('by_decoder:\n  "x\\ny": {}\n', "no such decoder"),       # a name on two lines, told on one
    ]:
        path.write_text(body)
        with pytest.raises(ConfigError) as error:
            load_config(str(path))
        assert message in str(error.value) and str(path) in str(error.value) and "\n" not in str(error.value), body


@pytest.mark.parametrize("override, message", [
    (["model.hiden_dim=5"], "unknown setting 'model.hiden_dim' (did you mean model.hidden_dim?)"),
    (["model.hidden_dim=lots"], "model.hidden_dim: expected int, got 'lots'"),
    (["model.hidden_dim=0"], "model.hidden_dim: 0 is below the minimum 1"),
    (["model.image_injection=sideways"], "model.image_injection: 'sideways' is not one of init_state, first_input, every_step"),
    (["train.lr=nan"], "train.lr: expected float"),
    (["model.freeze_encoder=maybe"], "model.freeze_encoder: expected bool"),
    (["data.split_ratio=0.5,0.5"], "data.split_ratio: expected three fractions"),
    (["hidden_dim"], "expected KEY=VALUE"),
    (["train.device=tpu"], "train.device: unknown device 'tpu'; expected auto, cpu, cuda, cuda:N or mps"),  # the one device rule's words
])
def test_bad_settings_give_one_line_errors(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, override)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_config_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(str(bad))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("modle:\n  encoder: small\n")
    with pytest.raises(ConfigError, match="unknown setting 'modle' \\(did you mean model\\?\\)"):
        load_config(str(unknown))
    with pytest.raises(ConfigError, match="no such config file or preset"):
        load_config("no-such-preset")


def test_a_word_vocabulary_setting_is_refused_whichever_source_names_the_lm_decoder(tmp_path):
    words = tmp_path / "words.yaml"
    words.write_text("data:\n  min_word_count: 2\n")
    lm = tmp_path / "lm.yaml"
    lm.write_text("model:\n  decoder: prefix-lm\n")
    refusals = {f"{words}: data.min_word_count": (words, ["model.decoder=prefix-lm"]),
                "--set data.min_word_count": (lm, ["data.min_word_count=2"]),
                "--set data.min_word_count: a word": (None, ["model.decoder=prefix-lm", "data.min_word_count=2"])}
    for expected, (path, overrides) in refusals.items():
        with pytest.raises(ConfigError, match="a word-vocabulary setting") as error:
            load_config(str(path) if path else None, overrides)
        assert str(error.value).startswith(expected), str(error.value)
    assert load_config(str(words), []).data.min_word_count == 2       # a word decoder keeps it
    both = tmp_path / "both.yaml"      # a file's by_decoder section gives it for that decoder alone
    both.write_text("by_decoder:\n  prefix-lm:\n    data:\n      min_word_count: 2\n")
    with pytest.raises(ConfigError, match=f"^{both}: by_decoder.prefix-lm: data.min_word_count: a word-vocabulary setting"):
        load_config(str(both), ["model.decoder=prefix-lm"])
    assert load_config(str(both), []).data.min_word_count == Config().data.min_word_count   # not for nic
