"""Property-based tests (hypothesis): the tokenizer and vocabulary, and decoding invariants."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from showtell.decoding.search import beam_search, greedy
from showtell.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary, tokenize

words = st.text(alphabet="abcdefghijklmnopqrstuvwxyzé", min_size=1, max_size=8)
captions = st.lists(st.lists(words, min_size=1, max_size=12), min_size=1, max_size=20)


@given(st.text(max_size=80))
def test_tokens_are_lowercase_and_free_of_punctuation_and_space(text):
    for token in tokenize(text):
        assert token and token == token.lower() and not any(c.isspace() for c in token)
        assert not any(c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" for c in token)
    assert tokenize(" ".join(tokenize(text))) == tokenize(text)


@given(captions, st.integers(min_value=1, max_value=3))
def test_vocabulary_round_trip(tmp_path_factory, corpus, min_count):
    vocab = Vocabulary.build(corpus, min_count)
    path = tmp_path_factory.mktemp("v") / "vocab.json"
    vocab.save(path)
    assert Vocabulary.load(path) == vocab
    for tokens in corpus:
        ids = vocab.encode(tokens)
        assert ids[0] == START and ids[-1] == END and len(ids) == len(tokens) + 2
        decoded = vocab.decode(ids).split()
        assert decoded == [w if w in vocab.index and w not in SPECIALS else "<unk>" for w in tokens]


class RandomModel:
    """Arbitrary (seeded) next-word distributions that depend on the step and previous word."""

    def __init__(self, seed: int, vocab: int, steps: int, end_bias: float):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(steps + 2, vocab, vocab, generator=g) * 3
        self.table[..., END] += end_bias

    def init_state(self, n):
        return {"t": torch.zeros(n, dtype=torch.long)}

    def step(self, words, state):
        logits = self.table[state["t"].clamp(max=self.table.shape[0] - 1), words]
        return torch.log_softmax(logits, -1), {"t": state["t"] + 1}, None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), vocab=st.integers(5, 12), beam=st.integers(1, 6), max_length=st.integers(1, 8),
       end_bias=st.floats(-4, 3), alpha=st.sampled_from([0.0, 0.5, 1.0]), batch=st.integers(1, 4))
def test_beam_search_invariants(seed, vocab, beam, max_length, end_bias, alpha, batch):
    model = RandomModel(seed, vocab, max_length, end_bias)
    out = beam_search(model, batch, beam, max_length, length_penalty=alpha, n_best=beam)
    scores = out.scores
    for b in range(batch):
        finite = [(not f, s) for s, f in zip(scores[b].tolist(), out.finished[b].tolist()) if math.isfinite(s)]
        assert finite, "every picture gets at least one caption"
        # complete captions come first (a truncated one only fills the n-best list), each group by score
        assert finite == sorted(finite, key=lambda x: (x[0], -x[1]))
        for k in range(out.sequences.shape[1]):
            if not math.isfinite(float(scores[b, k])):
                continue
            n = int(out.lengths[b, k])
            assert 0 <= n <= max_length
            seq = out.sequences[b, k]
            assert not ((seq[:n] == PAD) | (seq[:n] == START) | (seq[:n] == END) | (seq[:n] == UNK)).any()
            assert (seq[n:] == PAD).all()
            if not out.finished[b, k]:
                assert n == max_length  # an unfinished caption only ever stops at the limit
            expected = out.logprobs[b, k] / (((n + 1) if out.finished[b, k] else n) ** alpha if alpha else 1.0)
            assert math.isclose(float(scores[b, k]), float(expected), rel_tol=1e-4, abs_tol=1e-4)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), vocab=st.integers(5, 10), max_length=st.integers(1, 8), end_bias=st.floats(-4, 3))
def test_greedy_invariants_and_beam_one(seed, vocab, max_length, end_bias):
    model = RandomModel(seed, vocab, max_length, end_bias)
    g = greedy(model, 3, max_length)
    b = beam_search(model, 3, 1, max_length)
    assert torch.equal(g.sequences, b.sequences) and torch.equal(g.finished, b.finished)
    assert (g.lengths <= max_length).all()
    assert torch.allclose(g.logprobs, b.logprobs, atol=1e-5)
