"""model.decoder=prefix-lm against the library that defines the language model: a tiny GPT-2 and a
byte-level BPE tokenizer, both trained or made here and saved to a temporary folder.

Checked: greedy and beam search equal transformers' `generate(inputs_embeds=prefix)`; teacher
forcing and `word_logprobs` equal the LM's own loss; a frozen LM stays bit-identical through
training; a prefix captioner learns a small batch (and cannot when the prefix is zeroed, a mutation
in scripts/mutation_check.py); the tokenizer interface and its one-line errors.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from showtell.decoding.scoring import word_logprobs  # noqa: E402
from showtell.decoding.search import beam_search, greedy  # noqa: E402
from showtell.errors import ConfigError  # noqa: E402
from showtell.models.caption_model import CaptionModel  # noqa: E402
from showtell.models.prefix_lm import build  # noqa: E402
from showtell.tokenizer import HFTokenizer  # noqa: E402

EOS = "<|endoftext|>"
FEATURE_DIM = 16
CAPTIONS = ["a red circle above a blue square", "two green triangles on a white background",
            "a small yellow star left of a big circle", "three shapes in a row", "a blue square",
            "one red triangle below a green star"]


def save_tokenizer(folder, texts=CAPTIONS * 3, vocab_size: int = 300) -> None:
    """A byte-level BPE (GPT-2's kind) trained on `texts`, eos doubling as bos and unk as in GPT-2."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS)
    fast.save_pretrained(folder)


def _save_lm(folder, pretrain_steps: int = 0, positions: int = 64, extra_rows: int = 0, width: int = 32):
    """A 2-layer, 32-wide GPT-2 with the tokenizer beside it; `pretrain_steps` of language modelling
    on the captions' text (eos caption eos) teach it to end its sentences; `extra_rows` embedding
    rows beyond the tokenizer's ids (as Pythia, OPT and Qwen pad theirs)."""
    save_tokenizer(folder)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(0)
    # a wide initialisation: peaked distributions, so argmax ties cannot decide a comparison
    config = transformers.GPT2Config(vocab_size=len(tok) + extra_rows, n_positions=positions, n_embd=width, n_layer=2, n_head=2,
                                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                                     initializer_range=0.3)
    lm = transformers.GPT2LMHeadModel(config)
    if pretrain_steps:
        text = [[tok.eos_token_id] + tok(c)["input_ids"] + [tok.eos_token_id] for c in CAPTIONS]
        optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
        for sequence in [torch.tensor([t]) for t in text] * (pretrain_steps // len(text)):
            optimizer.zero_grad()
            lm(sequence, labels=sequence).loss.backward()
            optimizer.step()
    lm.save_pretrained(folder)   # safetensors
    return folder


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return _save_lm(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def pretrained_lm_dir(tmp_path_factory):
    return _save_lm(tmp_path_factory.mktemp("tiny-gpt2-text"), pretrain_steps=60)


def _settings(lm_dir, **over):
    m = dict(language_model=str(lm_dir), prefix_length=4, mapper="mlp", freeze_language_model=False,
             transformer_layers=2, transformer_heads=4)
    return SimpleNamespace(**{**m, **over})


def _decoder(lm_dir, seed=0, **over):
    torch.manual_seed(seed)
    decoder = build(_settings(lm_dir, **over), 0, SimpleNamespace(global_dim=FEATURE_DIM), 0)
    return decoder.eval()


def _features(n=5, seed=1):
    return {"global": torch.randn(n, FEATURE_DIM, generator=torch.Generator().manual_seed(seed)) * 3}


def _generated(decoder, features, max_length, **kwargs):
    """transformers' own search from the same prefix: per row, the tokens before its first eos."""
    eos = decoder.specials.end
    with torch.no_grad():
        out = decoder.lm.generate(inputs_embeds=decoder.prefix(features), max_new_tokens=max_length + 1,
                                  do_sample=False, eos_token_id=eos, pad_token_id=eos, **kwargs)
    rows = []
    for row in out.tolist():
        ended = eos in row
        row = row[:row.index(eos)] if ended else row
        rows.append((row[:max_length], ended and len(row) <= max_length))
    return rows


def test_greedy_equals_generate_token_for_token(lm_dir):
    decoder, features = _decoder(lm_dir), _features(6)
    with torch.no_grad():
        ours = greedy(decoder, features, max_length=12)
    theirs = _generated(decoder, features, 12)
    for i, (tokens, ended) in enumerate(theirs):
        assert ours.sequences[i, 0, :int(ours.lengths[i, 0])].tolist() == tokens
        assert bool(ours.finished[i, 0]) == ended
    assert len({tuple(t) for t, _ in theirs}) > 1, "every picture got the same caption: a weak comparison"


@pytest.mark.parametrize("mapper", ["mlp", "transformer"])
def test_beam_equals_generate_with_three_beams_when_captions_end(pretrained_lm_dir, mapper):
    """An LM that ends its sentences, length_penalty 0 (both rank by the summed log-probability) and
    early_stopping='never' (transformers stops only when no live beam can win, as showtell does).
    The rules part in one place (docs/decoders.md): showtell lets a hypothesis end when <end> is among
    its own 3 best tokens (im2txt), transformers only when it is among the 3 best of all beams'
    candidates. So each picture's caption is transformers' own, or a finished caption of higher
    log-probability that transformers' rule never let finish."""
    decoder, features = _decoder(pretrained_lm_dir, mapper=mapper), _features(8, seed=2)
    eos = decoder.specials.end
    with torch.no_grad():
        ours = beam_search(decoder, features, beam_size=3, max_length=16, n_best=1)
        theirs = decoder.lm.generate(inputs_embeds=decoder.prefix(features), max_new_tokens=17, do_sample=False,
                                     eos_token_id=eos, pad_token_id=eos, num_beams=3, length_penalty=0.0,
                                     early_stopping="never", output_scores=True, return_dict_in_generate=True)
    assert bool(ours.finished.all()), "captions must end before the limit for this comparison"
    same = 0
    for i, row in enumerate(theirs.sequences.tolist()):
        mine = ours.sequences[i, 0, :int(ours.lengths[i, 0])].tolist()
        if eos in row and row[:row.index(eos)] == mine:
            assert float(ours.logprobs[i, 0]) == pytest.approx(float(theirs.sequences_scores[i]), abs=1e-4)
            same += 1
        else:   # the rules' one difference, and only to showtell's advantage
            assert eos not in row and float(ours.logprobs[i, 0]) > float(theirs.sequences_scores[i]), i
    assert same >= 6, f"only {same} of 8 captions equal transformers'"


def test_beam_equals_generate_at_the_length_limit(lm_dir):
    """An LM that never ends: both return the best of the beams alive after max_length tokens, when
    transformers is given max_new_tokens=max_length (showtell's extra step counts only an <end>)."""
    decoder, features = _decoder(lm_dir), _features(6, seed=2)
    eos = decoder.specials.end
    with torch.no_grad():
        ours = beam_search(decoder, features, beam_size=3, max_length=10, n_best=1)
        theirs = decoder.lm.generate(inputs_embeds=decoder.prefix(features), max_new_tokens=10, do_sample=False,
                                     eos_token_id=eos, pad_token_id=eos, num_beams=3, length_penalty=0.0)
    assert not bool(ours.finished.any())
    assert ours.sequences[:, 0].tolist() == theirs.tolist()


def test_sampling_ensembles_and_scoring_need_no_special_case(pretrained_lm_dir):
    """Samples report the LM's own log-probability (the one scoring gives them back), and an
    ensemble of one prefix-LM decodes as the decoder itself."""
    from showtell.decoding.ensemble import Ensemble
    from showtell.decoding.sampling import sample

    decoder, features = _decoder(pretrained_lm_dir), _features(4, seed=7)
    eos = decoder.specials.end
    with torch.no_grad():
        drawn, _, _ = sample(decoder, features, max_length=16, generator=torch.Generator().manual_seed(0),
                             samples_per_image=2)
        rows = torch.arange(4).repeat_interleave(2)
        finished = drawn.finished[:, 0]
        assert bool(finished.any())
        targets = torch.full((8, 17), eos)
        for i in range(8):
            n = int(drawn.lengths[i, 0])
            targets[i, :n] = drawn.sequences[i, 0, :n]
        table = word_logprobs(decoder, {"global": features["global"][rows]}, targets)
        for i in range(8):
            n = int(drawn.lengths[i, 0]) + int(finished[i])         # <end> counts when the sample ended
            assert float(table[i, :n].sum()) == pytest.approx(float(drawn.logprobs[i, 0]), abs=1e-4)
        alone, together = greedy(decoder, features, 16), greedy(Ensemble([decoder]), [features], 16)
    assert torch.equal(alone.sequences, together.sequences)


def test_teacher_forced_logprobs_equal_the_lms_own_loss(lm_dir):
    decoder, tok = _decoder(lm_dir), HFTokenizer.load(str(lm_dir))
    captions = [tok.encode(c.split()) for c in CAPTIONS[:4]]
    width = max(map(len, captions))
    eos = tok.specials.end
    tokens = torch.tensor([c + [eos] * (width - len(c)) for c in captions])          # <start>=eos .. eos, eos-padded
    real = torch.tensor([[t < len(c) - 1 for t in range(width - 1)] for c in captions])
    features = _features(4)
    with torch.no_grad():
        model = CaptionModel(torch.nn.Identity(), decoder).eval()
        out = model(tokens, features=features)
        ours = float(out.nll) / out.words
        table = word_logprobs(decoder, features, tokens[:, 1:])
        scored = -float(table[real].sum()) / int(real.sum())
        labels = torch.where(real, tokens[:, 1:], torch.full_like(tokens[:, 1:], -100))
        prefix = decoder.prefix(features)
        inputs = torch.cat([prefix, decoder.embed(tokens[:, 1:])], dim=1)
        labels = torch.cat([torch.full((4, decoder.prefix_length), -100), labels], dim=1)
        theirs = float(decoder.lm(inputs_embeds=inputs, labels=labels).loss)
    assert out.words == int(real.sum())
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert scored == pytest.approx(theirs, abs=1e-5)


def test_training_and_decoding_read_the_lms_own_logits(lm_dir):
    """An LM whose forward changes its logits (Gemma's softcap, a scale; here a forward hook) gives
    teacher forcing the same log-probabilities as decoding's init_state/step."""
    decoder, tok = _decoder(lm_dir), HFTokenizer.load(str(lm_dir))
    decoder.lm.register_forward_hook(lambda module, args, out: out.__setitem__("logits", 0.25 * out.logits))
    tokens = torch.tensor([tok.encode(CAPTIONS[4].split())])
    features = _features(1)
    with torch.no_grad():
        out = CaptionModel(torch.nn.Identity(), decoder).eval()(tokens, features=features)
        scored = float(word_logprobs(decoder, features, tokens[:, 1:]).sum())
    assert -float(out.nll) == pytest.approx(scored, abs=1e-4)


def test_ids_beyond_the_tokenizer_are_never_generated(tmp_path):
    """An LM with more embedding rows than its tokenizer has tokens, made to favour those rows: greedy,
    beam and sampling choose only ids the tokenizer can write."""
    from showtell.decoding.sampling import sample

    lm = _save_lm(tmp_path / "padded", extra_rows=20)
    decoder, size = _decoder(lm), len(HFTokenizer.load(str(lm)))
    assert decoder.lm.get_input_embeddings().num_embeddings == size + 20
    def favour_extra_rows(module, args, out):
        out.logits[..., size:] += 50.0
    decoder.lm.register_forward_hook(favour_extra_rows)
    features = _features(3)
    with torch.no_grad():
        written = [greedy(decoder, features, 6).sequences, beam_search(decoder, features, 3, 6).sequences,
                   sample(decoder, features, 6, generator=torch.Generator().manual_seed(0))[0].sequences]
    for sequences in written:
        assert int(sequences.max()) < size


def _trainer(decoder, lr=3e-3):
    """The decoder in a model in training mode, and an optimiser of what trains."""
    model = CaptionModel(torch.nn.Identity(), decoder).train()
    params = [p for p in model.parameters() if p.requires_grad]    # as training's optimiser takes them
    optimizer = torch.optim.Adam(params, lr=lr, weight_decay=1e-4)
    return model, optimizer


def _batch(lm_dir, n):
    tok = HFTokenizer.load(str(lm_dir))
    captions = [tok.encode(c.split()) for c in CAPTIONS[:n]]
    width = max(map(len, captions))
    return tok, torch.tensor([c + [tok.specials.pad] * (width - len(c)) for c in captions])


@pytest.mark.parametrize("freeze", [True, False])
def test_a_frozen_language_model_stays_bit_identical(lm_dir, freeze):
    decoder = _decoder(lm_dir, freeze_language_model=freeze)
    before = {k: v.clone() for k, v in decoder.lm.state_dict().items()}
    mapper_before = [p.clone() for p in decoder.mapper.parameters()]
    model, optimizer = _trainer(decoder)
    _, tokens = _batch(lm_dir, 4)
    assert decoder.lm.config.resid_pdrop > 0                       # the LM has dropout to switch off
    with torch.no_grad():                                          # in training mode: a frozen LM has none
        twice = [float(model(tokens, features=_features(4)).loss) for _ in range(2)]
    assert (twice[0] == twice[1]) == freeze
    for _ in range(3):
        optimizer.zero_grad()
        model(tokens, features=_features(4)).loss.backward()
        optimizer.step()
    same = all(torch.equal(before[k], v) for k, v in decoder.lm.state_dict().items())
    assert same == freeze                      # unfrozen: the same steps do move the LM (the test can fail)
    assert not all(torch.equal(a, b) for a, b in zip(mapper_before, decoder.mapper.parameters()))
    assert decoder.lm.training is (not freeze)   # a frozen LM runs without dropout


def test_a_prefix_captioner_learns_a_small_batch(lm_dir):
    """Four pictures, four captions: after training, greedy decoding reads each picture's own
    caption back. Only the prefix tells the pictures apart, so a zeroed prefix fails here."""
    decoder = _decoder(lm_dir, seed=3)
    tok, tokens = _batch(lm_dir, 4)
    features = _features(4, seed=5)
    model, optimizer = _trainer(decoder)
    for _ in range(120):
        optimizer.zero_grad()
        loss = model(tokens, features=features).loss
        (loss / tokens.shape[0]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = greedy(model, features, max_length=30)
    written = [tok.decode(out.sequences[i, 0, :int(out.lengths[i, 0])].tolist()) for i in range(4)]
    assert written == CAPTIONS[:4]


def test_the_tokenizer_interface(lm_dir, tmp_path, monkeypatch):
    tok = HFTokenizer.load(str(lm_dir))
    eos = tok.specials.end
    assert tok.specials.start == eos and tok.specials.pad == eos    # GPT-2's one special token
    ids = tok.encode("a red circle".split())
    assert ids[0] == eos and ids[-1] == eos and len(ids) > 2
    assert tok.decode(ids) == tok.decode(ids[1:]) == "a red circle"  # a leading start (== end) is skipped
    assert tok.decode(tok.encode("one two three four".split(), max_words=2)) == "one two"
    assert tok.words_of("A red, circle.") == ["a", "red", "circle"]   # as training text is tokenised
    assert hash(tok) == hash(HFTokenizer.load(str(lm_dir))) and tok == HFTokenizer.load(str(lm_dir))
    monkeypatch.chdir(lm_dir.parent)
    assert HFTokenizer.load(lm_dir.name).name == str(lm_dir.resolve())   # a folder is recorded absolute
    assert tok.specials.never(block_unk=True) == ()                  # eos is end: never masked
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="no tokenizer files") as error:
        HFTokenizer.load(str(tmp_path))
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="neither a folder nor a model in your Hugging Face cache"):
        HFTokenizer.load("no-such-org/no-such-model-here")
