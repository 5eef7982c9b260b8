"""Decoding against models whose probabilities we control."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from showtell.decoding.ensemble import Ensemble
from showtell.decoding.sampling import sample
from showtell.decoding.search import beam_search, greedy
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


def _nic(seed=0, vocab=12, injection="init_state"):
    torch.manual_seed(seed)
    decoder = NICDecoder(vocab, feature_dim=10, embed_dim=8, hidden_dim=16, dropout=0.0, image_injection=injection)
    return decoder.eval()


@pytest.mark.parametrize("injection", ["init_state", "every_step"])
@pytest.mark.parametrize("beam", [1, 4])
def test_batched_decoding_equals_one_image_at_a_time(beam, injection):
    decoder = _nic(injection=injection)
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


class HandModel:
    """Next-word probabilities written by hand for each prefix of real words (a dict from the
    prefix tuple to {word: probability}); every other word gets what is left, shared evenly.
    A prefix not in the table ends for sure."""

    def __init__(self, table: dict[tuple, dict[int, float]]):
        self.table = table

    def init_state(self, images: torch.Tensor):
        return {"image": images.clone(), "prefix": torch.zeros((len(images), 0), dtype=torch.long)}

    def distribution(self, prefix: tuple) -> torch.Tensor:
        given = self.table.get(prefix, {END: 1.0})
        rest = [w for w in range(V) if w not in given]
        probs = torch.full((V,), max(0.0, 1.0 - sum(given.values())) / len(rest) if rest else 0.0)
        for w, p in given.items():
            probs[w] = p
        return probs.log()

    def step(self, words, state):
        prefix = state["prefix"] if int(words[0]) == START else torch.cat([state["prefix"], words.unsqueeze(1)], 1)
        logprobs = torch.stack([self.distribution(tuple(row)) for row in prefix.tolist()])
        return logprobs, {"image": state["image"], "prefix": prefix}, None


A, B, C, D = WORDS
# Beam 3, at most 2 words. "b" ends after one word and "a d" at the limit; "a c" is the most
# probable prefix (0.25) but at the limit its <end> is not among its three best words, nor is
# that of "b c" (0.09).
LIMIT = HandModel({
    (): {A: 0.5, B: 0.3, C: 0.15, END: 0.05},
    (A,): {C: 0.5, D: 0.4, A: 0.08, END: 0.02},
    (B,): {END: 0.5, C: 0.3, D: 0.15, A: 0.05},
    (C,): {A: 0.4, B: 0.3, D: 0.25},
    (A, C): {C: 0.6, D: 0.3, A: 0.05, END: 0.03},
    (A, D): {END: 0.5, C: 0.3, D: 0.2},
    (B, C): {A: 0.5, C: 0.3, D: 0.15, END: 0.05},
})


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_beam_alive_at_max_length_is_unfinished_and_ranked_after_finished(alpha):
    out = beam_search(LIMIT, torch.zeros(1, dtype=torch.long), beam_size=3, max_length=2, n_best=3, length_penalty=alpha)
    got = [(out.sequences[0, k, :int(out.lengths[0, k])].tolist(), bool(out.finished[0, k])) for k in range(3)]
    finished = [([B], True), ([A, D], True)]
    if alpha:  # lp / (length+1)**2: "a d" (0.1 over 3 tokens) beats "b" (0.15 over 2)
        finished.reverse()
    assert got == finished + [([A, C], False)]  # "a c" (0.25) is the most probable, yet last
    expected = {(B,): 0.3 * 0.5, (A, D): 0.5 * 0.4 * 0.5, (A, C): 0.5 * 0.5}   # no <end> for "a c"
    for k, (words, _) in enumerate(got):
        assert out.logprobs[0, k].item() == pytest.approx(math.log(expected[tuple(words)]), abs=1e-5)
    assert out.lengths[0, 2] == 2 and out.scores[0, 2].item() == pytest.approx(math.log(0.25) / 2 ** alpha, abs=1e-5)
    one = beam_search(LIMIT, torch.zeros(1, dtype=torch.long), beam_size=3, max_length=2, n_best=1, length_penalty=alpha)
    assert one.sequences[0, 0, :int(one.lengths[0, 0])].tolist() == got[0][0] and bool(one.finished[0, 0])


def test_beam_with_nothing_finished_returns_the_best_unfinished_first():
    model = HandModel({(): {A: 0.6, B: 0.4}, (A,): {C: 0.9, D: 0.1}, (B,): {C: 0.6, D: 0.4},
                       **{(x, y): {C: 0.6, D: 0.3, END: 0.01} for x in WORDS for y in WORDS}})
    out = beam_search(model, torch.zeros(1, dtype=torch.long), beam_size=2, max_length=2, n_best=2)
    assert not out.finished.any()
    assert [out.sequences[0, k].tolist() for k in range(2)] == [[A, C], [B, C]]   # 0.54, 0.24
    assert out.logprobs[0].tolist() == pytest.approx([math.log(0.54), math.log(0.24)], abs=1e-5)


def _loves_specials(seed: int) -> TableModel:
    """A model that puts most of its mass on <unk>, <pad> and <start>: renormalising after
    masking them would change every reported log-probability a lot."""
    model = TableModel(n_images=6, max_steps=6, seed=seed, end_bias=0.5)
    model.table[..., UNK] += 3.0
    model.table[..., PAD] += 2.0
    model.table[..., START] += 1.0
    return model


def test_greedy_beam_and_sampling_report_the_models_own_logprob():
    model = _loves_specials(10)
    images = torch.arange(6).repeat(4)
    outputs = [greedy(model, images, 6), beam_search(model, images, 3, 6, n_best=3),
               sample(model, images, 6, generator=torch.Generator().manual_seed(0))[0],
               sample(model, images, 6, temperature=0.6, top_k=3, generator=torch.Generator().manual_seed(1))[0]]
    for out in outputs:
        for row in range(len(images)):
            for k in range(out.sequences.shape[1]):
                words = out.sequences[row, k, :int(out.lengths[row, k])].tolist()
                truth = model.logprob(int(images[row]), words, bool(out.finished[row, k]))
                assert out.logprobs[row, k].item() == pytest.approx(truth, abs=1e-5), words


def test_sample_cut_at_max_length_is_unfinished_without_a_forced_end():
    """<end> has probability only after the last word, 0.3 then: about 30% of samples end by
    themselves there, the others are cut, unfinished, with no log-probability for a word they lack."""
    max_length = 3
    model = TableModel(n_images=1, max_steps=max_length, seed=11)
    model.table[:, :max_length, :, END] = -math.inf
    model.table[:, max_length, :, :] = torch.tensor([-math.inf, -math.inf, math.log(0.3), -math.inf] + [math.log(0.7 / 4)] * 4)
    images = torch.zeros(400, dtype=torch.long)
    out, token_lp, mask = sample(model, images, max_length, generator=torch.Generator().manual_seed(3))
    assert (out.lengths == max_length).all()
    assert 80 < int(out.finished.sum()) < 160
    assert torch.equal(mask[:, max_length], out.finished[:, 0])        # the cut word is not part of the caption
    for row in range(0, 400, 7):
        words = out.sequences[row, 0].tolist()
        truth = model.logprob(0, words, bool(out.finished[row, 0]))
        assert out.logprobs[row, 0].item() == pytest.approx(truth, abs=1e-5)


def test_sampling_top_p_draws_exactly_the_nucleus():
    """Probabilities 0.45, 0.3, 0.15, 0.1 and top_p 0.7: the nucleus is the first two words (0.45
    is short of 0.7, 0.75 is not). Keeping words while the mass *including* them is below top_p
    would draw only the first; no filtering would draw all four."""
    model = HandModel({(): {A: 0.45, B: 0.3, C: 0.15, D: 0.1}})
    first, _, _ = sample(model, torch.zeros(300, dtype=torch.long), max_length=1, top_p=0.7,
                         generator=torch.Generator().manual_seed(2))
    drawn = first.sequences[:, 0, 0]
    assert set(drawn.tolist()) == {A, B}
    share = float((drawn == A).float().mean())
    assert abs(share - 0.45 / 0.75) < 0.1                       # drawn in proportion, renormalised


def _teacher_forced(decoder, features, words: list[int], finished: bool) -> float:
    """Log-probability of one caption under the decoder's own teacher-forcing forward pass."""
    targets = words + ([END] if finished else [])
    inputs = torch.tensor([[START] + targets[:-1]]) if targets else torch.zeros((1, 0), dtype=torch.long)
    if not targets:
        return 0.0
    logits, _ = decoder(features, inputs)                      # every decoder: (logits, penalty)
    return float(F.log_softmax(logits[0].float(), dim=-1).gather(1, torch.tensor(targets).unsqueeze(1)).sum())


@pytest.mark.parametrize("injection", ["init_state", "every_step"])
def test_sample_logprobs_equal_teacher_forcing_and_carry_gradients(injection):
    decoder = _nic(seed=2, injection=injection)
    features = {"global": torch.randn(3, 10, requires_grad=True)}
    out, token_lp, mask = sample(decoder, features, max_length=8, generator=torch.Generator().manual_seed(0),
                                 samples_per_image=2, temperature=0.8)
    assert token_lp.shape == mask.shape and out.sequences.shape[0] == 6
    token_lp.sum().backward()
    assert features["global"].grad is not None and features["global"].grad.abs().sum() > 0
    with torch.no_grad():
        for row in range(6):
            one = {"global": features["global"][row // 2:row // 2 + 1]}
            words = out.sequences[row, 0, :int(out.lengths[row, 0])].tolist()
            truth = _teacher_forced(decoder, one, words, bool(out.finished[row, 0]))
            assert out.logprobs[row, 0].item() == pytest.approx(truth, abs=1e-5)
            # token_logprobs are the policy's: the masked, tempered distribution the words came from
            targets = words + ([END] if out.finished[row, 0] else [])
            inputs = torch.tensor([[START] + targets[:-1]])
            logits, _ = decoder(one, inputs)          # (1, T, V), no penalty
            logits = logits[0].float()
            logits[:, [PAD, START, UNK]] = -math.inf
            policy = F.log_softmax(logits / 0.8, dim=-1).gather(1, torch.tensor(targets).unsqueeze(1)).squeeze(1)
            assert torch.allclose(token_lp[row][mask[row]], policy, atol=1e-5)


def _reference_beam(model, image: int, k: int, max_length: int, n_best: int):
    """Beam search written the slow, obvious way (one image, Python lists), as im2txt does it."""
    live, done = [(0.0, [], model.init_state(torch.tensor([image])))], []
    for t in range(max_length + 1):
        grown = []
        for lp, words, state in live:
            logprobs, after, _ = model.step(torch.tensor([words[-1] if words else START]), state)
            logprobs = logprobs[0].clone()
            logprobs[[PAD, START, UNK]] = -math.inf
            values, ids = logprobs.topk(k)
            for value, word in zip(values.tolist(), ids.tolist()):
                if word == END:
                    done.append((lp + value, words))
                elif t < max_length and math.isfinite(value):
                    grown.append((lp + value, words + [word], after))
        live = sorted(grown, key=lambda x: -x[0])[:k]
    done.sort(key=lambda x: -x[0])
    return [(words, lp, True) for lp, words in done[:n_best]] + \
        [(words, lp, False) for lp, words, _ in live[:n_best - len(done[:n_best])]]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_narrow_beam_equals_a_reference_beam_search(k):
    """Beams narrower than the vocabulary prune; the exhaustive comparison (beam 64) never does."""
    model = TableModel(n_images=12, max_steps=6, seed=12, end_bias=-0.5)
    out = beam_search(model, torch.arange(12), beam_size=k, max_length=6, n_best=k)
    for i in range(12):
        truth = _reference_beam(model, i, k, 6, k)
        got = [(out.sequences[i, j, :int(out.lengths[i, j])].tolist(), out.logprobs[i, j].item(), bool(out.finished[i, j]))
               for j in range(len(truth))]
        assert [(w, f) for w, _, f in got] == [(w, f) for w, _, f in truth], i
        assert [lp for _, lp, _ in got] == pytest.approx([lp for _, lp, _ in truth], abs=1e-4)
