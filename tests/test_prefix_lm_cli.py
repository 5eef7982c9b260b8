"""model.decoder=prefix-lm through the command line: train -> caption -> score -> evaluate on a tiny GPT-2
made in the test, and the one-line refusals of bad input (exit status 2)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_prefix_lm import _save_lm  # noqa: E402

from showtell.cli import main  # noqa: E402

SETTINGS = ["--config", "synth", "--set", "model.decoder=prefix-lm", "--set", "model.prefix_length=4",
            "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "data.image_size=32",
            "--set", "train.val_max_images=8", "--set", "train.warmup_steps=2"]


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    _error.last = lines[-1] if lines else ""
    return _error.last


def test_train_caption_score_evaluate_through_the_cli(tmp_path, synth_dir, capsys, monkeypatch):
    lm, run = _save_lm(tmp_path / "lm"), tmp_path / "run"
    data = str(synth_dir / "dataset.json")
    monkeypatch.chdir(tmp_path)                 # the LM given as a relative folder, the run used from elsewhere
    assert main(["--quiet", "train", "--data", data, "--out", str(run), *SETTINGS,
                 "--set", "model.language_model=lm"]) == 0
    assert json.loads((run / "vocab.json").read_text())["language_model"] == str(lm.resolve())
    assert json.loads((run / "config.json").read_text())["model"]["language_model"] == str(lm.resolve())
    card = (run / "README.md").read_text()
    assert "- Tokens: the tokenizer of the language model" in card and "min_word_count" not in card
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    pictures = sorted((synth_dir / "images").iterdir())[:2]
    capsys.readouterr()
    assert main(["--quiet", "caption", str(run), *map(str, pictures), "--beam-size", "3"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2
    assert main(["--quiet", "score", "--json", str(run), str(pictures[0]), "a red circle", "A red circle."]) == 0
    plain, written = (json.loads(line) for line in capsys.readouterr().out.strip().splitlines())
    assert plain["words"][-1] == "<end>" and len(plain["words"]) > 2 and "<end>" not in plain["words"][:-1]
    assert written["words"] == plain["words"] and written["logprob"] == plain["logprob"]   # read as training text
    long = " ".join(["red"] * 70)                # 70 tokens pass the 64 positions less the 4-vector prefix
    assert main(["--quiet", "score", str(run), str(pictures[0]), long]) == 2
    assert f"captions: '{long[:20]}" in _error(capsys) and "prefix-lm run scores captions of at most 60 tokens" in _error.last
    assert main(["--quiet", "evaluate", str(run), "--data", data, "--max-images", "8"]) == 0
    results = json.loads(next((run / "evaluations").glob("*.json")).read_text())
    assert results


def test_bad_input_is_one_line_and_status_2(tmp_path, synth_dir, capsys):
    data = str(synth_dir / "dataset.json")
    lm = _save_lm(tmp_path / "lm", positions=6)
    wide = _save_lm(tmp_path / "wide")            # 64 positions
    no_tokenizer = tmp_path / "bare"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((lm / "config.json").read_text())
    cases = {
        "no tokenizer files": [f"model.language_model={no_tokenizer}"],
        "data.min_word_count: a word-vocabulary setting": [f"model.language_model={lm}", "data.min_word_count=2"],
        # 4 + caption > 6 positions, found before the run folder is made (whatever the batch order)
        "data.max_caption_length: the longest training caption is": [f"model.language_model={lm}"],
        "decode.max_length: 61 tokens pass the 60 a prefix-lm decoder with these settings writes":
            [f"model.language_model={wide}", "decode.max_length=61", "data.max_caption_length=5"],
        "model.language_model: model.decoder=prefix-lm needs a language model": [],
        "model.word_embeddings: word vectors do not apply": [f"model.language_model={lm}", "model.word_embeddings=glove:x"],
    }
    for expected, extra in cases.items():
        args = [a for x in extra for a in ("--set", x)]
        code = main(["--quiet", "train", "--data", data, "--out", str(tmp_path / "r"), *SETTINGS, *args])
        line = _error(capsys)
        assert code == 2 and expected in line, (expected, line)
        assert "Traceback" not in line
        assert not (tmp_path / "r").exists(), expected


def test_a_missing_transformers_names_the_extra(monkeypatch):
    import sys

    from showtell.errors import ConfigError
    from showtell.tokenizer import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)    # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pip install showtell\[lm\]"):
        require_transformers()
