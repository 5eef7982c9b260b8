"""model.decoder=prefix-lm through the command line: train -> caption -> score -> evaluate on a tiny GPT-2
made in the test, and the one-line refusals of bad input (exit status 2)."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from conftest import save_preset_encoder
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
    captions = capsys.readouterr().out
    assert len(captions.strip().splitlines()) == 2
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
    # the run holds its LM's config and tokenizer (its weights are in model.safetensors): the run and its
    # exported package load and caption alike with the LM folder gone
    assert sorted(p.name for p in (run / "language_model").iterdir()) == sorted(p.name for p in lm.iterdir()
                                                                                 if p.suffix != ".safetensors")
    assert main(["--quiet", "export", str(run), str(tmp_path / "package")]) == 0
    shutil.rmtree(lm)
    for source in (run, tmp_path / "package"):
        capsys.readouterr()
        assert main(["--quiet", "caption", str(source), *map(str, pictures), "--beam-size", "3"]) == 0
        assert capsys.readouterr().out == captions.replace(str(run), str(source))
    # a copy that no longer describes the weights (another LM's config): one line naming the setting
    shutil.copyfile(_save_lm(tmp_path / "wide", width=48) / "config.json", run / "language_model" / "config.json")
    assert main(["--quiet", "caption", str(run), str(pictures[0])]) == 2
    own = (run / "language_model" / "config.json").resolve()
    assert f"{own}: does not describe the language model in model.safetensors" in _error(capsys)


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


@pytest.mark.slow
def test_resume_and_self_critical_training_with_a_prefix_lm(tmp_path, synth_dir, monkeypatch):
    """A run stopped inside its self-critical epoch and resumed ends as an uninterrupted one: the
    prefix-LM's cache, sampling, CIDEr reward and the fine-tuned LM's optimiser state all go
    through the same code as any decoder's."""
    from test_reliability import assert_uninterrupted

    import showtell.training.loop as loop
    from showtell.config import load_config
    from showtell.data.formats import read_annotations
    from showtell.training.entry import resume, train

    records = read_annotations(str(synth_dir / "dataset.json"), None)
    config = load_config("synth", [*SETTINGS[3::2], f"model.language_model={_save_lm(tmp_path / 'lm', pretrain_steps=60)}",
                                   "train.scst_epochs=1", "train.scst_samples=2", "train.checkpoint_every=3",
                                   "train.seed=4"])
    train(config, records, tmp_path / "whole", show_progress=False)
    history = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["xe", "scst"]
    per_epoch = history[0]["step"]
    steps = iter(range(1000))        # stop inside the self-critical epoch, decided by counting steps
    monkeypatch.setattr(loop, "should_stop", lambda deadline, requested, device: next(steps) == per_epoch + 1)
    summary = train(config, records, tmp_path / "stopped", show_progress=False)
    assert summary["stopped_early"] and summary["steps"] == per_epoch + 2
    monkeypatch.undo()
    resume(tmp_path / "stopped", records, show_progress=False)
    assert_uninterrupted(tmp_path / "stopped", tmp_path / "whole", "after a resume in the self-critical epoch")
    # with the LM folder gone the run resumes from its own copy; a changed setting rewrites config.json,
    # which still names the language model the run was trained from
    lm = config.model.language_model
    shutil.rmtree(lm)
    resume(tmp_path / "whole", records, show_progress=False, overrides=["train.scst_epochs=2"])
    saved = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert saved["train"]["scst_epochs"] == 2 and saved["model"]["language_model"] == lm
    history = [json.loads(line) for line in (tmp_path / "whole" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["xe", "scst", "scst"]


@pytest.mark.slow
def test_serve_captions_with_a_prefix_lm_as_the_captioner_does(tmp_path, synth_dir):
    """`showtell serve` in its own process: /v1/captions and Hugging Face's POST / give the
    Captioner's own beam-3 captions for a prefix-LM run."""
    import httpx
    from conftest import Server

    from showtell.inference.captioner import Captioner

    run = tmp_path / "run"
    assert main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(run), *SETTINGS,
                 "--set", f"model.language_model={_save_lm(tmp_path / 'lm', pretrain_steps=60)}"]) == 0
    pictures = sorted((synth_dir / "images").iterdir())[:3]
    expected = [r.caption for r in Captioner.load(run).caption(pictures, beam_size=3)]
    server = Server(run)
    try:
        answer = httpx.post(server.url + "/v1/captions", params={"beam_size": 3}, timeout=60,
                            files=[("images", (p.name, p.read_bytes(), "image/png")) for p in pictures])
        assert answer.status_code == 200, answer.text
        assert [r["caption"] for r in answer.json()["results"]] == expected
        hf = httpx.post(server.url + "/", content=pictures[0].read_bytes(), timeout=60,
                        headers={"Content-Type": "image/png"}, params={})
        assert hf.status_code == 200, hf.text
        assert len(expected) == 3 and all(expected), expected
        assert hf.json()[0]["generated_text"] == Captioner.load(run).caption(pictures[0]).caption
    finally:
        assert "Traceback" not in server.stop()


def test_prepare_then_train_and_evaluate_from_the_feature_cache(tmp_path, synth_dir, capsys):
    """`prepare` caches a frozen encoder's vectors and the LM's tokenizer; a prefix-LM trains from the
    cache, and evaluating from the cache equals evaluating from the pictures."""
    import torch

    torch.manual_seed(11)
    weights = tmp_path / "small.safetensors"
    save_preset_encoder(weights, "prefix-lm")
    lm, cache, run = _save_lm(tmp_path / "lm", pretrain_steps=60), tmp_path / "cache", tmp_path / "run"
    common = [*SETTINGS, "--set", f"model.language_model={lm}", "--set", f"model.encoder_weights={weights}",
              "--set", "model.freeze_encoder=true"]
    data = str(synth_dir / "dataset.json")
    assert main(["--quiet", "prepare", "--data", data, "--out", str(cache), *common]) == 0
    assert json.loads((cache / "vocab.json").read_text())["language_model"] == str(lm)
    assert main(["--quiet", "train", "--features", str(cache), "--out", str(run), *common]) == 0
    capsys.readouterr()
    scores = []
    for source in (["--features", str(cache)], ["--data", data]):
        assert main(["--quiet", "evaluate", str(run), *source, "--json"]) == 0
        scores.append(json.loads(capsys.readouterr().out))
    for key in ("Bleu_4", "CIDEr", "perplexity"):
        assert scores[0][key] == pytest.approx(scores[1][key], abs=1e-6), key
