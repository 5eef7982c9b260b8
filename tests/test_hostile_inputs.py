"""Inputs nobody here wrote: punctuation tokens, colliding paths, extreme settings and numbers,
strange file names and pictures, interrupted commands, and the Python API's edge cases. Each
answer is right, or one line naming the setting, file or argument; never a traceback."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from showtell import Captioner
from showtell.cli import main
from showtell.errors import ArgumentError, ConfigError, DataError

TINY = ["--config", "synth", "--set", "model.embed_dim=16", "--set", "model.hidden_dim=48", "--set", "train.batch_size=16",
        "--set", "data.image_size=32", "--set", "train.val_max_images=8", "--set", "train.warmup_steps=2",
        "--set", "data.min_word_count=1"]


@pytest.fixture
def showtell_log(caplog):
    """The showtell logger's records (it does not propagate to the root logger caplog listens on)."""
    import logging

    logger = logging.getLogger("showtell")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def _pictures(synth_dir, n=4):
    return sorted(str(p) for p in (synth_dir / "images").glob("*.png"))[:n]


def _one_line(done, *words):
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


# --- what decoding reports is what scoring gives, whatever the training tokens ----------------------------------
def _punctuated_karpathy(synth_dir, out):
    """The built-in scenes as a Karpathy file whose tokens keep punctuation as words (':' and ','),
    as files written by other tools often do; raw text written to match."""
    data = json.loads((synth_dir / "dataset.json").read_text())
    for image in data["images"]:
        for sentence in image["sentences"]:
            words = sentence["tokens"]
            tokens = words[:2] + [":"] + words[2:4] + [","] + words[4:]
            sentence["tokens"], sentence["raw"] = tokens, " ".join(tokens)
    path = out / "punctuated.json"
    path.write_text(json.dumps(data))
    return path


def _csv(synth_dir, out):
    data = json.loads((synth_dir / "dataset.json").read_text())
    path = out / "captions.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption", "split"])
        for image in data["images"]:
            for sentence in image["sentences"]:
                writer.writerow([f"images/{image['filename']}", sentence["raw"].capitalize() + ".", image["split"]])
    return path


@pytest.fixture(scope="module", params=["karpathy, punctuation tokens", "csv"])
def format_run(request, synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("formats")
    data = _punctuated_karpathy(synth_dir, out) if request.param.startswith("karpathy") else _csv(synth_dir, out)
    run = out / "run"
    assert main(["--quiet", "train", "--data", str(data), "--images", str(synth_dir), "--out", str(run), *TINY,
                 "--set", "train.epochs=4", "--set", "train.lr=0.004"]) == 0
    return request.param, run


@pytest.mark.parametrize("mode", [dict(beam_size=1), dict(beam_size=3, n_best=3),
                                  dict(n_best=4, sampling={"temperature": 1.0, "seed": 3})])
def test_every_decoded_caption_scores_what_decoding_reported(format_run, synth_dir, mode):
    name, run = format_run
    captioner = Captioner.load(run)
    pictures = _pictures(synth_dir, 6)
    compared, punctuation = 0, 0
    for result in captioner.caption(pictures, **mode):
        scores = captioner.logprob(result.source, [h.caption for h in result.hypotheses])
        for h, s in zip(result.hypotheses, scores):
            assert s.words[:-1] == h.caption.split()                       # the very words decoding wrote
            expected = s.logprob if h.finished else s.logprob - s.word_logprobs[-1]
            assert h.logprob == pytest.approx(expected, abs=1e-4), (name, h.caption)
            compared += 1
            punctuation += any(w in (":", ",") for w in h.caption.split())
    assert compared >= 6
    if name.startswith("karpathy"):
        assert punctuation > 0, "the model never wrote a punctuation token: the test would not test the rule"


# --- data --------------------------------------------------------------------------------------------------------
def test_one_picture_under_two_spellings_cannot_be_in_two_splits(synth_dir, tmp_path):
    from showtell.config import load_config
    from showtell.data.formats import load_dataset

    (synth_dir / "images" / "sub").mkdir(exist_ok=True)
    table = tmp_path / "c.csv"
    table.write_text("image,caption,split\nimages/000001.png,a red circle,train\n"
                     "images/sub/../000001.png,a red circle,test\nimages/000002.png,a blue square,train\n")
    with pytest.raises(DataError, match=r"is the same picture as images/000001.png .*splits train and test"):
        load_dataset([str(table)], synth_dir, load_config(None).data)


def test_a_vocabulary_of_no_words_is_refused_and_a_mostly_unknown_one_warned(synth_dir, tmp_path, showtell_log):
    done = run_cli("train", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "r"), *TINY,
                   "--set", "data.min_word_count=1000000")
    _one_line(done, "data.min_word_count=1000000", "no training word is seen that often")
    assert not (tmp_path / "r" / "config.json").exists()
    from showtell.vocab import build_vocabulary

    words = [["a", "b", "c", "d"], ["a", "e", "f", "g"], ["a", "h", "i", "j"]]
    assert build_vocabulary(words, 2).words[4:] == ["a"]
    assert "become <unk>" in showtell_log.text


# --- numbers and settings ---------------------------------------------------------------------------------------
def test_integers_are_parsed_exactly_and_seeds_bounded(trained_run, synth_dir, tmp_path):
    from showtell.config import load_config

    assert load_config(None, ["train.seed=1234567890123456789"]).train.seed == 1234567890123456789
    for value in ("12345678901234567891", "1e20"):
        with pytest.raises(ConfigError, match="train.seed"):
            load_config(None, [f"train.seed={value}"])
    picture = _pictures(synth_dir, 1)[0]
    _one_line(run_cli("caption", str(trained_run), picture, "--sample", "--seed", "99999999999999999999"), "--seed")
    with pytest.raises(ArgumentError, match="seed"):
        Captioner.load(trained_run).caption(picture, sampling={"seed": 2 ** 70})


def test_an_unknown_key_in_a_config_file_names_the_file(tmp_path):
    from showtell.config import load_config

    path = tmp_path / "mine.yaml"
    path.write_text("model:\n  hiden_dim: 3\n")
    with pytest.raises(ConfigError, match=f"^{path}: unknown setting 'model.hiden_dim'"):
        load_config(str(path))


def test_a_picture_too_small_for_the_encoder_is_refused_before_training(synth_dir, tmp_path):
    done = run_cli("train", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "r"),
                   "--set", "model.encoder=squeezenet1_1", "--set", "model.encoder_weights=none",
                   "--set", "model.freeze_encoder=false", "--set", "data.image_size=16")
    _one_line(done, "data.image_size: 16 px is too small for the squeezenet1_1 encoder")


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_serve_refuses_limits_that_are_not_finite(trained_run, value):
    _one_line(run_cli("serve", str(trained_run), "--max-upload-mb", value), "--max-upload-mb")


def test_a_budget_stop_before_any_validation_says_the_model_was_never_validated(synth_dir, tmp_path, monkeypatch,
                                                                                capsys):
    import showtell.training.loop as loop

    steps = iter(range(1000))
    monkeypatch.setattr(loop, "should_stop", lambda deadline, requested, device: next(steps) == 1)
    assert main(["train", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "r"), *TINY]) == 0
    assert "never validated: training stopped after 2 steps" in capsys.readouterr().err
    assert "Not validated" in (tmp_path / "r" / "README.md").read_text()


# --- file names and pictures --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", [[], ["--csv"], ["--json"]])
def test_a_file_name_that_is_not_utf8_is_printed_escaped(trained_run, synth_dir, tmp_path, fmt):
    folder = tmp_path / "pics"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")
    (folder / name).write_bytes((synth_dir / "images" / "000001.png").read_bytes())
    done = run_cli("caption", str(trained_run), str(folder), *fmt,
                   env={"PYTHONIOENCODING": "utf-8", "LC_ALL": "C.UTF-8"})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    shown = json.loads(done.stdout)["image"] if fmt == ["--json"] else done.stdout
    assert "caf\\xe9.png" in shown


def test_an_extreme_strip_is_never_resized_whole():
    from showtell.data.images import ImageTransform

    sizes = []
    real = Image.Image.resize

    def spy(self, size, *args, **kwargs):
        sizes.append(size)
        return real(self, size, *args, **kwargs)

    strip = Image.new("RGB", (40_000, 1), (10, 200, 30))
    transform = ImageTransform(crop=224, resize=256)
    try:
        Image.Image.resize = spy
        shaped = transform(strip)
        array = transform.to_array(strip)
    finally:
        Image.Image.resize = real
    assert tuple(shaped.shape) == (3, 224, 224) and np.array_equal(shaped.numpy(), array)
    assert max(w * h for w, h in sizes) <= 224 * 224


def test_the_shortcut_gives_the_picture_the_full_resize_gives():
    import showtell.data.images as images

    rng = np.random.default_rng(0)
    strip = Image.fromarray(rng.integers(0, 255, (24, 2400, 3), dtype=np.uint8))
    transform = images.ImageTransform(crop=224, resize=256)
    fast = transform(strip).numpy()
    limit, images.LONG_SIDE_LIMIT = images.LONG_SIDE_LIMIT, 10 ** 9
    try:
        full = transform(strip).numpy()
    finally:
        images.LONG_SIDE_LIMIT = limit
    assert np.abs(fast.astype(int) - full.astype(int)).max() <= 1


# --- the Python API -----------------------------------------------------------------------------------------------
def test_logprob_takes_one_picture_of_every_documented_kind(trained_run, synth_dir):
    captioner = Captioner.load(trained_run)
    picture = _pictures(synth_dir, 1)[0]
    expected = captioner.logprob(picture, "a red circle").logprob
    data = open(picture, "rb").read()
    for source in (np.asarray(Image.open(picture).convert("RGB")), bytearray(data), memoryview(data), io.BytesIO(data)):
        assert captioner.logprob(source, "a red circle").logprob == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ArgumentError, match="captions"):
        captioner.logprob(picture, [])


def test_a_caption_longer_than_a_transformer_reads_is_one_line(synth_dir, tmp_path):
    run = tmp_path / "t"
    assert main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(run), *TINY,
                 "--set", "train.epochs=1", "--set", "model.decoder=transformer", "--set", "model.transformer_ff_dim=32"]) == 0
    done = run_cli("score", str(run), _pictures(synth_dir, 1)[0], " ".join(["red"] * 300))
    _one_line(done, "at most 254 words")


@pytest.mark.parametrize("command, module, words", [
    ("evaluate", "showtell.evaluation.evaluate.evaluate_run", "nothing was written"),
    ("prepare", "showtell.training.prepare.prepare", "run the same prepare again"),
])
def test_ctrl_c_says_what_the_interruption_means_for_each_command(trained_run, synth_dir, tmp_path, monkeypatch,
                                                                  capsys, command, module, words):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, interrupted)
    argv = {"evaluate": ["evaluate", str(trained_run)],
            "prepare": ["prepare", "--data", str(synth_dir / "dataset.json"), "--out", str(tmp_path / "f"), "--config",
                        "synth", "--set", "data.image_size=32"]}[command]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert words in err and "--resume" not in err
