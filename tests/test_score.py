"""Every decoder's reported log-probability is the model's: `Captioner.logprob` (teacher forcing)
of the same caption gives the same number, for greedy, beam, sampled and ensemble captions."""

from __future__ import annotations

import json
import math

import pytest

from showtell.cli import main
from showtell.inference.captioner import Captioner


def _pictures(synth_dir, n=4):
    return sorted(str(p) for p in (synth_dir / "images").glob("*.png"))[:n]


def _check(captioner, picture, hypotheses):
    """Each hypothesis's logprob equals teacher forcing of its caption; an unfinished one's lacks <end>."""
    scores = captioner.logprob(picture, [h["caption"] for h in hypotheses])
    for h, s in zip(hypotheses, scores):
        expected = s.logprob if h["finished"] else s.logprob - s.word_logprobs[-1]
        assert h["logprob"] == pytest.approx(expected, abs=1e-4), h
    return sum(h["finished"] for h in hypotheses)


MODES = {"greedy": dict(beam_size=1), "beam": dict(beam_size=3, n_best=3),
         "sample": dict(n_best=4, sampling={"temperature": 0.7, "top_k": 0, "top_p": 0.9, "seed": 5})}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ensemble", [False, True])
def test_api_logprobs_equal_teacher_forcing(trained_run, attention_run, synth_dir, mode, ensemble):
    captioner = Captioner.load([trained_run, attention_run] if ensemble else trained_run)
    finished = 0
    for result in captioner.caption(_pictures(synth_dir), **MODES[mode]):
        assert not result.error
        finished += _check(captioner, result.source, [h.__dict__ for h in result.hypotheses])
    if mode == "sample":  # this weak model's samples cover both kinds of caption (greedy ones never end)
        assert 0 < finished < 16


@pytest.mark.parametrize("options", [["--beam-size", "3", "--n-best", "3"], ["--sample", "--n-best", "3", "--seed", "2"]])
def test_caption_json_logprobs_equal_teacher_forcing(trained_run, attention_run, synth_dir, options, capsys):
    pictures = _pictures(synth_dir, 3)
    assert main(["--quiet", "caption", str(trained_run), *pictures, "--ensemble", str(attention_run), "--json", *options]) == 0
    captioner = Captioner.load([trained_run, attention_run])
    for line in capsys.readouterr().out.splitlines():
        record = json.loads(line)
        _check(captioner, record["image"], record["hypotheses"])
        assert record["logprob"] == record["hypotheses"][0]["logprob"]


def test_logprob_by_hand_and_unknown_words(trained_run, synth_dir):
    """The per-word numbers are the model's next-word log-probabilities: check the first word
    against one decoder step, perplexity against its definition, and an unknown word as <unk>."""
    import torch

    captioner = Captioner.load(trained_run)
    picture = _pictures(synth_dir, 1)[0]
    s = captioner.logprob(picture, "A red, red zebraish circle.")
    assert s.words == ["a", "red", "red", "<unk>", "circle", "<end>"]
    assert s.logprob == pytest.approx(sum(s.word_logprobs), abs=1e-6)
    assert s.perplexity == pytest.approx(math.exp(-s.logprob / 6), rel=1e-6)
    model, vocab = captioner.runtime.models[0], captioner.vocab
    image = model.transform(__import__("PIL.Image", fromlist=["Image"]).open(picture).convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        first, _, _ = model.step(torch.tensor([1]), model.init_state(model.encode(image)))
    assert s.word_logprobs[0] == pytest.approx(float(first[0, vocab.index["a"]]), abs=1e-5)
    both = captioner.logprob([picture, picture], ["a red circle", "a blue square"])
    assert [b.caption for b in both] == ["a red circle", "a blue square"]
    assert both[0].logprob == pytest.approx(captioner.logprob(picture, "a red circle").logprob, abs=1e-5)


def test_score_command_prints_each_caption(trained_run, synth_dir, capsys):
    picture = _pictures(synth_dir, 1)[0]
    assert main(["score", str(trained_run), picture, "a red circle", "three shapes", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["caption"] for x in lines] == ["a red circle", "three shapes"]
    assert lines[0]["words"][-1] == "<end>" and len(lines[0]["word_logprobs"]) == 4
    assert main(["score", str(trained_run), picture, "a red circle"]) == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "<end>" in out
    assert main(["score", str(trained_run), picture + ".missing", "a red circle"]) != 0


def test_sampled_alternatives_rank_finished_captions_before_cut_ones(trained_run, synth_dir, monkeypatch):
    """A sample cut at decode.max_length lacks its <end> term, so its log-probability is not
    comparable with a finished one's: like beam search, finished ones come first. The samples come
    from a stand-in with hand-set log-probabilities: the cut ones are the more probable."""
    import torch

    from showtell import Captioner
    from showtell.decoding import sampling
    from showtell.decoding.search import Decoded

    def drawn(model, features, max_length, *args, samples_per_image=1, **kwargs):
        n = samples_per_image
        finished = torch.tensor([True, False, True, False, False, True])[:n]
        logprobs = torch.tensor([-5.0, -1.0, -3.0, -2.0, -0.5, -4.0])[:n]
        sequences = torch.full((n, 1, max_length), 5)
        lengths = torch.full((n, 1), max_length)
        return Decoded(sequences, lengths, logprobs.view(n, 1), logprobs.view(n, 1), finished.view(n, 1)), None, None

    monkeypatch.setattr(sampling, "sample", drawn)
    captioner = Captioner.load(trained_run)
    image = str(sorted((synth_dir / "images").glob("*.png"))[0])
    result = captioner.caption(image, n_best=6, sampling={"seed": 3})
    assert [(h.finished, h.logprob) for h in result.hypotheses] == [
        (True, -3.0), (True, -4.0), (True, -5.0), (False, -0.5), (False, -1.0), (False, -2.0)]
