"""The Transformer decoder: one teacher-forced pass equals step-by-step decoding with its key-value
cache, every decoding mode works through `init_state`/`step`, and it learns."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from showtell.cli import main
from showtell.config import load_config
from showtell.decoding.ensemble import Ensemble
from showtell.decoding.sampling import sample
from showtell.decoding.search import beam_search, greedy
from showtell.errors import ConfigError
from showtell.models.caption_model import scheduled_sampling
from showtell.models.nic import NICDecoder
from showtell.models.transformer import TransformerDecoder
from showtell.vocab import END, PAD, START

L, DG, DC = 9, 6, 8          # grid cells, pooled size, grid channels


def _decoder(seed=0, vocab=15, scale=0.3, **options) -> TransformerDecoder:
    """A small decoder in eval mode, its weights drawn larger than the training initialisation so
    that every part of it (positions, slots, each layer) moves the output visibly."""
    torch.manual_seed(seed)
    settings = dict(embed_dim=10, width=16, layers=2, heads=4, ff_dim=24, dropout=0.0)
    decoder = TransformerDecoder(vocab, DC, DG, L, **{**settings, **options})
    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0.0, scale)
    return decoder.eval()


def _features(batch, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"global": torch.randn(batch, DG, generator=g), "grid": torch.randn(batch, L, DC, generator=g)}


def _teacher_forced(decoder, features, words: list[int]) -> float:
    """log p(words + <end>) from one teacher-forced pass."""
    targets = torch.tensor([words + [END]])
    logits, _ = decoder(features, torch.tensor([[START] + words]))
    return float(torch.log_softmax(logits[0], -1).gather(1, targets.T).sum())


@pytest.mark.parametrize("options", [{}, {"positions": "sinusoidal"}, {"tie_embeddings": True},
                                     {"tie_embeddings": True, "embed_dim": 16, "layers": 3, "attention_layer": 0}])
def test_teacher_forcing_equals_step_by_step_decoding_with_the_cache(options):
    decoder = _decoder(**options)
    features = _features(3)
    inputs = torch.randint(4, 15, (3, 8))
    inputs[:, 0] = START
    with torch.no_grad():
        logits, penalty = decoder(features, inputs)
        state = decoder.init_state(features)
        stepped = []
        for t in range(inputs.shape[1]):
            logprobs, state, attention = decoder.step(inputs[:, t], state)
            stepped.append(logprobs)
            assert state["self_k"].shape == (3, decoder_layers(decoder), t + 1, 16)
            assert attention.shape == (3, L) and torch.allclose(attention.sum(-1), torch.ones(3), atol=1e-6)
    assert float(penalty) == 0.0
    assert torch.allclose(torch.log_softmax(logits, -1), torch.stack(stepped, dim=1), atol=1e-5)


def decoder_layers(decoder):
    return len(decoder.layers)


def test_forward_at_positions_returns_the_real_words_only():
    decoder = _decoder()
    features, inputs = _features(2), torch.tensor([[START, 5, 6, 7], [START, 8, PAD, PAD]])
    positions = torch.tensor([[True, True, True, True], [True, True, False, False]])
    with torch.no_grad():
        full, _ = decoder(features, inputs)
        picked, _ = decoder(features, inputs, positions)
    assert picked.shape == (6, 15) and torch.allclose(picked, full[positions], atol=1e-6)


def test_a_later_word_never_changes_an_earlier_prediction():
    decoder = _decoder()
    features = _features(2)
    inputs = torch.randint(4, 15, (2, 7))
    inputs[:, 0] = START
    changed = inputs.clone()
    changed[:, 4] = torch.where(inputs[:, 4] == 5, 6, 5)
    with torch.no_grad():
        before, _ = decoder(features, inputs)
        after, _ = decoder(features, changed)
    assert torch.equal(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:], atol=1e-3)   # and it does change the later ones


def test_large_beam_equals_exhaustive_search_on_a_tiny_vocabulary():
    """4 real words, captions of at most 3: every caption's log-probability from teacher forcing;
    beam search (64 wide) must return the 5 best, in order, with those log-probabilities."""
    decoder = _decoder(seed=3, vocab=8, scale=0.5)
    features = _features(2, seed=4)
    with torch.no_grad():
        out = beam_search(decoder, features, beam_size=64, max_length=3, n_best=5)
        for i in range(2):
            one = {k: v[i:i + 1] for k, v in features.items()}
            truth = sorted(((_teacher_forced(decoder, one, list(w)), list(w))
                            for n in range(4) for w in itertools.product([4, 5, 6, 7], repeat=n)), reverse=True)
            for k in range(5):
                n = int(out.lengths[i, k])
                assert out.sequences[i, k, :n].tolist() == truth[k][1]
                assert out.logprobs[i, k].item() == pytest.approx(truth[k][0], abs=1e-4)
                assert bool(out.finished[i, k])


@pytest.mark.parametrize("beam", [1, 4])
def test_batched_decoding_equals_one_image_at_a_time(beam):
    decoder = _decoder(seed=5)
    features = _features(6, seed=6)
    with torch.no_grad():
        decode = (lambda f: beam_search(decoder, f, beam, 10, n_best=beam, return_attention=True)) if beam > 1 \
            else (lambda f: greedy(decoder, f, 10, return_attention=True))
        batch = decode(features)
        assert len({tuple(s.flatten().tolist()) for s in batch.sequences}) > 1   # the images do differ
        for i in range(6):
            single = decode({k: v[i:i + 1] for k, v in features.items()})
            assert torch.equal(batch.sequences[i], single.sequences[0])
            assert torch.allclose(batch.logprobs[i], single.logprobs[0], atol=1e-5)
            assert torch.allclose(batch.attention[i], single.attention[0], atol=1e-5)


def test_sampled_captions_and_scheduled_sampling_agree_with_teacher_forcing():
    decoder = _decoder(seed=7)
    features = _features(3, seed=8)
    with torch.no_grad():
        drawn, _, _ = sample(decoder, features, 6, generator=torch.Generator().manual_seed(0), samples_per_image=2)
        for row in range(6):
            n = int(drawn.lengths[row, 0])
            words = drawn.sequences[row, 0, :n].tolist()
            if drawn.finished[row, 0]:
                one = {k: v[row // 2:row // 2 + 1] for k, v in features.items()}
                assert drawn.logprobs[row, 0].item() == pytest.approx(_teacher_forced(decoder, one, words), abs=1e-5)
        # scheduled sampling runs through `step`: with probability 0 it is teacher forcing
        inputs = torch.tensor([[START, 5, 6, 7, 8], [START, 9, 10, PAD, PAD], [START, 4, PAD, PAD, PAD]])
        positions = inputs != PAD
        logits, penalty = decoder(features, inputs, positions)
        stepped, penalty2 = scheduled_sampling(decoder, features, inputs, positions, 0.0)
    assert torch.allclose(torch.log_softmax(logits, -1), stepped, atol=1e-5) and float(penalty2) == 0.0
    decoder.train()   # and with probability 1 in training mode it runs and has gradients
    stepped, _ = scheduled_sampling(decoder, features, inputs, positions, 1.0)
    stepped.sum().backward()
    assert decoder.embed.weight.grad is not None


def test_ensemble_with_an_lstm_of_the_same_vocabulary():
    """Greedy decoding of a transformer + NIC ensemble: every word is the argmax of the averaged
    probabilities, and the reported log-probability is that of the average, from each model's
    own teacher-forced pass."""
    transformer = _decoder(seed=9)
    torch.manual_seed(10)
    nic = NICDecoder(15, DG, embed_dim=8, hidden_dim=16, dropout=0.0).eval()
    features = _features(3, seed=11)
    ensemble = Ensemble([transformer, nic])
    with torch.no_grad():
        out = greedy(ensemble, [features, features], 8)
        beam = beam_search(ensemble, [features, features], 3, 8, n_best=2)
        assert beam.sequences.shape == (3, 2, 8) and torch.isfinite(beam.logprobs).all()
        for i in range(3):
            n = int(out.lengths[i, 0])
            words = out.sequences[i, 0, :n].tolist() + ([END] if out.finished[i, 0] else [])
            one = {k: v[i:i + 1] for k, v in features.items()}
            inputs = torch.tensor([[START] + words[:-1]])
            a = torch.log_softmax(transformer(one, inputs)[0][0], -1)
            b = torch.log_softmax(nic(one, inputs)[0][0], -1)
            mean = torch.logsumexp(torch.stack([a, b]), 0) - torch.log(torch.tensor(2.0))   # (T, V)
            mean[:, [PAD, START, 3]] = -float("inf")
            assert mean.argmax(-1).tolist() == words
            truth = float((torch.logsumexp(torch.stack([a, b]), 0) - torch.log(torch.tensor(2.0)))
                          .gather(1, torch.tensor([words]).T).sum())
            assert out.logprobs[i, 0].item() == pytest.approx(truth, abs=1e-5)


def test_overfits_a_tiny_batch_and_reads_the_captions_back():
    torch.manual_seed(0)
    captions = [[4, 5, 6, 7, 8], [9, 10, 4], [11, 12, 13, 14, 5, 6], [7, 7, 9]]
    decoder = TransformerDecoder(15, DC, DG, L, embed_dim=16, width=32, layers=2, heads=4, ff_dim=64, dropout=0.0)
    features = _features(4, seed=12)
    longest = max(map(len, captions)) + 1
    tokens = torch.full((4, longest + 1), PAD)
    for i, c in enumerate(captions):
        tokens[i, :len(c) + 2] = torch.tensor([START, *c, END])
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    positions = targets != PAD
    optimiser = torch.optim.Adam(decoder.parameters(), lr=3e-3)
    for _ in range(150):
        logits, _ = decoder(features, inputs, positions)
        loss = F.cross_entropy(logits, targets[positions])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert loss.item() < 0.02
    decoder.eval()
    with torch.no_grad():
        for out in (greedy(decoder, features, 10), beam_search(decoder, features, 3, 10)):
            for i, c in enumerate(captions):
                assert out.sequences[i, 0, :int(out.lengths[i, 0])].tolist() == c and bool(out.finished[i, 0])


def test_step_under_bf16_autocast_returns_float32_logprobs():
    decoder = _decoder()
    features = _features(2)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = decoder(features, torch.tensor([[START, 5, 6]] * 2))
        out = greedy(decoder, features, 5)
        logprobs, _, _ = decoder.step(torch.tensor([START, START]), decoder.init_state(features))
    assert logprobs.dtype == torch.float32 and torch.isfinite(logits.float()).all() and out.sequences.shape == (2, 1, 5)


def test_settings_are_checked():
    config = load_config("synth", ["model.decoder=transformer"])
    assert config.model.transformer_layers >= 1 and config.model.hidden_dim % config.model.transformer_heads == 0
    with pytest.raises(ConfigError, match="multiple of model.transformer_heads"):
        load_config("synth", ["model.decoder=transformer", "model.transformer_heads=3"])
    with pytest.raises(ConfigError, match="names no layer"):
        load_config("synth", ["model.decoder=transformer", "model.transformer_attention_layer=2"])
    with pytest.raises(ConfigError, match="not one of"):
        load_config("synth", ["model.transformer_positions=rotary"])


def test_train_caption_attention_score_and_ensemble_through_the_cli(tmp_path, synth_dir, tiny_config_args,
                                                                     trained_run, capsys):
    """`showtell train` with model.decoder=transformer, then caption with attention maps, an
    ensemble with a NIC run of the same data, and Captioner.logprob equal to teacher forcing."""
    from showtell import Captioner

    run = tmp_path / "transformer"
    assert main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(run), *tiny_config_args,
                 "--set", "model.decoder=transformer", "--set", "model.transformer_ff_dim=64",
                 "--set", "model.transformer_tie_embeddings=true", "--set", "model.transformer_positions=sinusoidal",
                 "--set", "train.scheduled_sampling=linear:0.25:1"]) == 0
    images = sorted((synth_dir / "images").glob("*.png"))[:2]
    assert main(["caption", str(run), *map(str, images), "--attention", str(tmp_path / "maps"), "--beam-size", "2"]) == 0
    for image in images:
        assert (tmp_path / "maps" / f"{image.stem}.png").is_file()
    assert main(["caption", str(run), str(images[0]), "--ensemble", str(trained_run), "--beam-size", "3"]) == 0
    assert str(images[0]) in capsys.readouterr().out

    captioner = Captioner.load(run)
    result = captioner.caption(str(images[0]), return_attention=True)
    hypothesis = result.hypotheses[0]
    assert len(hypothesis.attention) == len(hypothesis.caption.split())
    assert result.grid_size ** 2 == captioner.runtime.models[0].encoder.grid_size
    text = "a red circle on a blue background"
    scored = captioner.logprob(str(images[0]), text)
    model = captioner.runtime.models[0]
    with torch.no_grad():
        image = captioner.load_images([str(images[0])])[0][0][0].unsqueeze(0)
        ids = [captioner.vocab.index.get(w, 3) for w in text.split()]
        assert _teacher_forced(model.decoder, model.encode(image), ids) == pytest.approx(scored.logprob, abs=1e-4)
