"""Show, Attend and Tell, attention maps, scheduled sampling, self-critical training, ensembles."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_preset_encoder

from showtell.cli import main
from showtell.config import load_config
from showtell.data.formats import read_annotations
from showtell.decoding.ensemble import Ensemble
from showtell.decoding.sampling import sample
from showtell.decoding.search import beam_search, greedy
from showtell.fileio import load_weights
from showtell.models.attention import AttentionDecoder
from showtell.training.entry import train
from showtell.vocab import END, PAD, START


def _decoder():
    torch.manual_seed(0)
    return AttentionDecoder(vocab_size=15, feature_dim=8, embed_dim=6, hidden_dim=12, attention_dim=10, dropout=0.0).eval()


def test_attention_weights_sum_to_one_at_every_step_in_every_decoding_mode():
    decoder = _decoder()
    features = {"grid": torch.randn(4, 9, 8)}
    with torch.no_grad():
        for out in (greedy(decoder, features, 10, return_attention=True),
                    beam_search(decoder, features, 3, 10, n_best=3, return_attention=True)):
            assert out.attention.shape[-1] == 9
            for b in range(4):
                for k in range(out.sequences.shape[1]):
                    n = int(out.lengths[b, k])
                    weights = out.attention[b, k, :n]
                    assert torch.allclose(weights.sum(-1), torch.ones(n), atol=1e-5)
                    assert (weights >= 0).all()
        state = decoder.init_state(features)
        for _ in range(5):
            _, state, alpha = decoder.step(torch.ones(4, dtype=torch.long), state)
            assert torch.allclose(alpha.sum(-1), torch.ones(4), atol=1e-6)


def test_sampled_attention_captions_are_their_images_and_score_as_teacher_forcing():
    """Three samples per image, rows image-major: each row's words, length and log-probability
    agree with the attention decoder's teacher-forced pass over *its own* image (a sampler that
    tiled the images instead, or miscounted lengths, fails here)."""
    decoder = _decoder()
    features = {"grid": torch.randn(4, 9, 8)}
    with torch.no_grad():
        drawn, _, _ = sample(decoder, features, 6, generator=torch.Generator().manual_seed(0), samples_per_image=3)
        for row in range(12):
            n = int(drawn.lengths[row, 0])
            words = drawn.sequences[row, 0].tolist()
            assert PAD not in words[:n] and set(words[n:]) <= {PAD}
            targets = words[:n] + ([END] if drawn.finished[row, 0] else [])
            logits, _ = decoder({"grid": features["grid"][row // 3:row // 3 + 1]}, torch.tensor([[START] + targets[:-1]]))
            truth = torch.log_softmax(logits[0], -1).gather(1, torch.tensor(targets).unsqueeze(1)).sum()
            assert drawn.logprobs[row, 0].item() == pytest.approx(float(truth), abs=1e-5)


def test_beam_attention_belongs_to_the_chosen_words():
    """The map returned for a beam hypothesis is the one computed when its words were chosen."""
    decoder = _decoder()
    with torch.no_grad():
        decoder.output.bias[END] -= 3.0     # long captions: hypotheses change places and share parents
    features = {"grid": torch.randn(2, 9, 8)}
    with torch.no_grad():
        out = beam_search(decoder, features, 4, 8, n_best=2, return_attention=True)
        assert out.lengths.min() >= 3
        for b in range(2):
            for k in range(2):
                n = int(out.lengths[b, k])
                words = out.sequences[b, k, :n]
                state = decoder.init_state({"grid": features["grid"][b:b + 1]})
                previous = torch.tensor([1])
                for t in range(n):
                    _, state, alpha = decoder.step(previous, state)
                    assert torch.allclose(alpha[0], out.attention[b, k, t], atol=1e-5)
                    previous = words[t:t + 1]


def test_penalty_is_doubly_stochastic_regulariser():
    decoder = _decoder()
    uniform = torch.full((2, 9, 9), 1.0 / 9)  # 9 words, each spreading evenly over 9 places: every place sums to 1
    assert decoder.attention_penalty(uniform, None).item() == pytest.approx(0.0, abs=1e-6)
    peaked = torch.zeros(2, 9, 9)
    peaked[..., 0] = 1.0  # all words on one place
    assert decoder.attention_penalty(peaked, None).item() == pytest.approx(2 * ((1 - 9) ** 2 + 8) / 9)


def test_attention_png_has_one_panel_per_word(attention_run, synth_dir, tmp_path):
    from showtell import Captioner
    from showtell.reporting.figures import attention_figure

    images = sorted((synth_dir / "images").glob("*.png"))[:2]
    assert main(["caption", str(attention_run), *map(str, images), "--attention", str(tmp_path / "maps")]) == 0
    for image in images:
        assert (tmp_path / "maps" / f"{image.stem}.png").is_file()
    result = Captioner.load(attention_run).caption(str(images[0]), return_attention=True)
    hypothesis = result.hypotheses[0]
    assert len(hypothesis.attention) == len(hypothesis.caption.split())
    _, panels = attention_figure(images[0], hypothesis, result.grid_size, tmp_path / "one.png")
    assert panels == len(hypothesis.caption.split()) and (tmp_path / "one.png").is_file()


def test_scheduled_sampling_feeds_back_only_words_that_decoding_could_write():
    """A decoder that puts nearly all its probability on <unk>, <pad> and <start>: with sampling
    probability 1 every fed-back word must still be a real word (or <end>)."""
    from showtell.models.caption_model import scheduled_sampling
    from showtell.vocab import PAD, START, UNK

    fed = []

    class Skewed(torch.nn.Module):
        def init_state(self, features):
            return {"h": features["global"]}

        def step(self, words, state):
            fed.append(words.clone())
            logits = torch.zeros(words.shape[0], 8)
            logits[:, [PAD, START, UNK]] = 12.0   # the other five words share about 1e-5
            return torch.log_softmax(logits, -1), state, None

    torch.manual_seed(0)
    inputs = torch.full((64, 6), 5)
    inputs[:, 0] = START
    logits, penalty = scheduled_sampling(Skewed(), {"global": torch.zeros(64, 1)}, inputs, inputs != PAD, 1.0)
    fed_back = torch.cat(fed[1:])
    assert logits.shape == (64 * 6, 8) and float(penalty) == 0.0
    assert not torch.isin(fed_back, torch.tensor([PAD, START, UNK])).any()


def test_scheduled_sampling_trains_and_self_critical_starts_from_the_best_cross_entropy_model(tmp_path, synth_dir):
    records = read_annotations(str(synth_dir / "dataset.json"), None)
    base = ["data.image_size=32", "model.hidden_dim=32", "model.embed_dim=16", "train.batch_size=16",
            "train.val_max_images=8", "train.warmup_steps=1", "train.epochs=2"]
    train(load_config("synth", base), records, tmp_path / "xe", show_progress=False)
    sc = load_config("synth", [*base, "train.scst_epochs=1", "train.scst_lr=0.01", "train.scst_samples=2",
                               "train.scheduled_sampling=linear:0.5:1"])
    ss = load_config("synth", [*base, "train.scheduled_sampling=linear:0.5:1"])
    train(ss, records, tmp_path / "ss", show_progress=False)
    summary = train(sc, records, tmp_path / "scst", show_progress=False)
    assert summary["epochs"] == 3
    history = [json.loads(x) for x in (tmp_path / "scst" / "history.jsonl").read_text().splitlines()]
    assert [h["phase"] for h in history] == ["xe", "xe", "scst"] and history[2]["scst_greedy_cider"] is not None
    # the self-critical phase started from (and kept a copy of) the best cross-entropy model: the
    # model the same settings give without self-critical epochs
    started, xe_only = load_weights(tmp_path / "scst" / "model-xe.safetensors"), load_weights(tmp_path / "ss" / "model.safetensors")
    assert all(torch.equal(started[k], xe_only[k]) for k in started)
    plain = load_weights(tmp_path / "xe" / "model.safetensors")
    assert any(not torch.equal(plain[k], xe_only[k]) for k in plain)   # scheduled sampling did take part


def test_attention_trains_from_cached_spatial_features(tmp_path, synth_dir):
    from showtell.data.features import FeatureCache
    from showtell.training.prepare import prepare

    records = read_annotations(str(synth_dir / "dataset.json"), None)
    weights = tmp_path / "small.safetensors"   # a "pretrained" encoder: a frozen random one is refused
    save_preset_encoder(weights, "attention")
    config = load_config("synth", ["model.decoder=attention", "model.attention_dim=16", "model.freeze_encoder=true",
                                   f"model.encoder_weights={weights}", "data.image_size=32", "model.hidden_dim=16",
                                   "train.epochs=1", "train.batch_size=16"])
    prepare(records, config, tmp_path / "cache", show_progress=False)
    cache = FeatureCache.open(tmp_path / "cache")
    assert cache.shape("grid") == (80, 4, 480)
    summary = train(cache.adapt(config), cache.records(), tmp_path / "run", show_progress=False, features=cache)
    assert summary["steps"] > 0


def test_ensemble_of_one_run_equals_the_run(trained_run, synth_dir):
    from showtell import Captioner

    images = [str(p) for p in sorted((synth_dir / "images").glob("*.png"))[:6]]
    alone = Captioner.load(trained_run).caption(images, beam_size=3, n_best=2)
    pair = Captioner.load([trained_run, trained_run]).caption(images, beam_size=3, n_best=2)
    for a, b in zip(alone, pair):
        assert [h.caption for h in a.hypotheses] == [h.caption for h in b.hypotheses]
        assert [h.logprob for h in a.hypotheses] == pytest.approx([h.logprob for h in b.hypotheses], abs=1e-5)
    model = Captioner.load(trained_run).runtime.models[0]
    features = {"global": torch.randn(3, model.encoder.global_dim), "grid": torch.randn(3, 16, 480)}
    with torch.no_grad():
        one = beam_search(model, features, 3, 12)
        ensemble = beam_search(Ensemble([model]), [features], 3, 12)
    assert torch.equal(one.sequences, ensemble.sequences)
