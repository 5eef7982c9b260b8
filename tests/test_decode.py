"""Decoding against models whose probabilities we control."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from showtell.decode import Ensemble, beam_search, greedy, sample
from showtell.models.nic import NICDecoder
from showtell.vocab import END, PAD, START, UNK

WORDS = [4, 5, 6, 7]          # a vocabulary of 4 real words after the 4 special tokens
V = 8


class TableModel:
    """Next-word log-probabilities from a fixed random table indexed by (image, step, previous
    word): history matters, so greedy is not optimal and beam search has work to do."""

    def __init__(self, n_images: int, max_steps: int, seed: int = 0, end_bias: float = 0.0, never_end: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(n_images, max_steps + 1, V, V, generator=g) * 2.0
        self.table[..., END] += end_bias
        if never_end:
            self.table[..., END] = -math.inf

    def init_state(self, images: torch.Tensor):
        return {"image": images.clone(), "t": torch.zeros_like(images)}

    def step(self, words, state):
        logits = self.table[state["image"], state["t"], words]
        return F.log_softmax(logits, dim=-1), {"image": state["image"], "t": state["t"] + 1}, None

    def logprob(self, image: int, words: list[int], finished: bool) -> float:
        """Exact log-probability of a word sequence (+ <end> if finished), as decoding masks it."""
        previous, total = START, 0.0
        for t, w in enumerate(words + ([END] if finished else [])):
            logits = self.table[image, t, previous].clone()
            total += float(F.log_softmax(logits, dim=-1)[w])
            previous = w
        return total


def exhaustive(model: TableModel, image: int, max_length: int, alpha: float = 0.0):
    """Every finished caption of up to max_length words, best first, by logprob / (len+1)**alpha."""
    found = []
    for n in range(max_length + 1):
        for words in itertools.product(WORDS, repeat=n):
            lp = model.logprob(image, list(words), finished=True)
            found.append((lp / ((n + 1) ** alpha if alpha else 1.0), list(words), lp))
    found.sort(key=lambda x: -x[0])
    return found


def _masked(model: TableModel):
    """Blocks <pad>, <start>, <unk> so the exhaustive search's alphabet equals decoding's."""
    model.table[..., PAD] = -math.inf
    model.table[..., START] = -math.inf
    model.table[..., UNK] = -math.inf
    return model


@pytest.mark.parametrize("alpha", [0.0, 0.7])
def test_large_beam_equals_exhaustive_search(alpha):
    max_length = 3
    model = _masked(TableModel(n_images=3, max_steps=max_length, seed=1, end_bias=-1.0))
    images = torch.arange(3)
    out = beam_search(model, images, beam_size=64, max_length=max_length, length_penalty=alpha, n_best=5)
    for i in range(3):
        truth = exhaustive(model, i, max_length, alpha)
        for k in range(5):
            length = int(out.lengths[i, k])
            assert out.sequences[i, k, :length].tolist() == truth[k][1]
            assert out.scores[i, k].item() == pytest.approx(truth[k][0], abs=1e-4)
            assert out.logprobs[i, k].item() == pytest.approx(truth[k][2], abs=1e-4)
            assert bool(out.finished[i, k])
        assert (out.scores[i, :-1] >= out.scores[i, 1:]).all()


def test_beam_search_beats_greedy_on_this_model():
    """On a history-dependent table some image has a better caption than the greedy one, and
    beam search (big enough) finds it; it is never worse."""
    model = _masked(TableModel(n_images=20, max_steps=4, seed=2, end_bias=-0.5))
    images = torch.arange(20)
    g = greedy(model, images, max_length=4, block_unk=True)
    b = beam_search(model, images, beam_size=64, max_length=4)
    done = g.finished[:, 0]  # an unfinished greedy caption's logprob lacks its <end>: not comparable
    assert done.sum() >= 10
    assert (b.logprobs[done, 0] >= g.logprobs[done, 0] - 1e-5).all()
    assert (b.logprobs[done, 0] > g.logprobs[done, 0] + 1e-3).any()


def test_beam_size_one_is_greedy():
    model = TableModel(n_images=16, max_steps=6, seed=3, end_bias=0.5)
    images = torch.arange(16)
    g = greedy(model, images, max_length=6)
    b = beam_search(model, images, beam_size=1, max_length=6)
    assert torch.equal(g.sequences, b.sequences)
    assert torch.equal(g.lengths, b.lengths)
    assert torch.equal(g.finished, b.finished)
    assert torch.allclose(g.logprobs, b.logprobs, atol=1e-5)


@pytest.mark.parametrize("beam", [1, 3])
def test_model_that_never_ends_still_gets_captions_of_max_length(beam):
    model = TableModel(n_images=4, max_steps=5, seed=4, never_end=True)
    out = beam_search(model, torch.arange(4), beam_size=beam, max_length=5) if beam > 1 else \
        greedy(model, torch.arange(4), max_length=5)
    assert (out.lengths[:, 0] == 5).all()
    assert not out.finished[:, 0].any()
    assert (out.sequences[:, 0] != PAD).all()
    assert torch.isfinite(out.logprobs[:, 0]).all()
    for i in range(4):
        words = out.sequences[i, 0].tolist()
        assert out.logprobs[i, 0].item() == pytest.approx(model.logprob(i, words, finished=False), abs=1e-4)


def test_special_tokens_are_never_generated():
    model = TableModel(n_images=8, max_steps=8, seed=5)
    model.table[..., UNK] += 6.0  # the model loves <unk>
    for out in (greedy(model, torch.arange(8), 8), beam_search(model, torch.arange(8), 4, 8)):
        words = out.sequences[out.sequences != PAD]
        assert not ((words == START) | (words == END) | (words == UNK)).any()


def _nic(seed=0, vocab=12):
    torch.manual_seed(seed)
    decoder = NICDecoder(vocab, feature_dim=10, embed_dim=8, hidden_dim=16, dropout=0.0)
    return decoder.eval()


@pytest.mark.parametrize("beam", [1, 4])
def test_batched_decoding_equals_one_image_at_a_time(beam):
    decoder = _nic()
    features = {"global": torch.randn(7, 10)}
    with torch.no_grad():
        batch = beam_search(decoder, features, beam, 12, n_best=beam) if beam > 1 else greedy(decoder, features, 12)
        for i in range(7):
            one = {"global": features["global"][i:i + 1]}
            single = beam_search(decoder, one, beam, 12, n_best=beam) if beam > 1 else greedy(decoder, one, 12)
            assert torch.equal(batch.sequences[i], single.sequences[0])
            assert torch.allclose(batch.logprobs[i], single.logprobs[0], atol=1e-5)


def test_ensemble_of_one_model_equals_that_model():
    decoder = _nic(seed=1)
    features = {"global": torch.randn(5, 10)}
    with torch.no_grad():
        alone = beam_search(decoder, features, 3, 10, n_best=3)
        ensemble = beam_search(Ensemble([decoder]), [features], 3, 10, n_best=3)
    assert torch.equal(alone.sequences, ensemble.sequences)
    assert torch.allclose(alone.logprobs, ensemble.logprobs, atol=1e-6)


def test_ensemble_averages_probabilities():
    a, b = TableModel(2, 3, seed=6), TableModel(2, 3, seed=7)
    ensemble = Ensemble([a, b])
    state = ensemble.init_state([torch.arange(2), torch.arange(2)])
    words = torch.full((2,), START)
    lp, _, _ = ensemble.step(words, state)
    pa, _, _ = a.step(words, a.init_state(torch.arange(2)))
    pb, _, _ = b.step(words, b.init_state(torch.arange(2)))
    assert torch.allclose(lp.exp(), (pa.exp() + pb.exp()) / 2, atol=1e-6)


def test_sampling_respects_top_k_and_is_reproducible():
    model = TableModel(n_images=4, max_steps=6, seed=8)
    images = torch.arange(4).repeat(50)
    out, token_lp, mask = sample(model, images, max_length=6, top_k=1, generator=torch.Generator().manual_seed(0))
    g = greedy(model, images, max_length=6, block_unk=True)
    assert torch.equal(out.sequences, g.sequences)  # top-1 sampling is greedy
    a, _, _ = sample(model, images, 6, temperature=1.5, generator=torch.Generator().manual_seed(1))
    b, _, _ = sample(model, images, 6, temperature=1.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.sequences, b.sequences)
    assert len({tuple(s) for s in a.sequences[:, 0].tolist()}) > 4  # it does sample


def test_sampling_top_p_keeps_only_the_nucleus():
    model = TableModel(n_images=1, max_steps=1, seed=9)
    first = F.log_softmax(model.table[0, 0, START].clone().index_fill(0, torch.tensor([PAD, START, UNK]), -math.inf), -1)
    order = first.exp().argsort(descending=True)
    nucleus = set(order[:2].tolist()) if first.exp()[order[0]] < 0.5 else {int(order[0])}
    out, _, _ = sample(model, torch.zeros(400, dtype=torch.long), max_length=1, top_p=0.5,
                       generator=torch.Generator().manual_seed(2))
    drawn = set(torch.where(out.lengths[:, 0] > 0, out.sequences[:, 0, 0], torch.full_like(out.lengths[:, 0], END)).tolist())
    cumulative_before = 0.0
    allowed = set()
    for w in order.tolist():
        if cumulative_before >= 0.5:
            break
        allowed.add(w)
        cumulative_before += float(first.exp()[w])
    assert drawn <= allowed
    assert nucleus <= allowed


def test_sample_logprobs_match_model_and_carry_gradients():
    decoder = _nic(seed=2).train()
    features = {"global": torch.randn(3, 10, requires_grad=True)}
    out, token_lp, mask = sample(decoder.eval(), features, max_length=8, generator=torch.Generator().manual_seed(0),
                                 samples_per_image=2)
    assert token_lp.shape == mask.shape and out.sequences.shape[0] == 6
    token_lp.sum().backward()
    assert features["global"].grad is not None and features["global"].grad.abs().sum() > 0
    assert torch.allclose(token_lp.sum(1).detach(), out.logprobs[:, 0], atol=1e-5)
