"""Pretrained word vectors initialise the embedding table; coverage is reported; they can be frozen."""

from __future__ import annotations

import logging
import struct

import numpy as np
import pytest
import torch

from showtell.config import load_config
from showtell.data.formats import read_annotations
from showtell.models.caption_model import build_model
from showtell.vocab import Vocabulary


def vectors(words, dim=6, seed=0):
    rng = np.random.default_rng(seed)
    return {w: rng.normal(size=dim).astype(np.float32) for w in words}


@pytest.fixture
def vocab():
    return Vocabulary.build([["a", "red", "circle", "zorblat"], ["a", "blue", "square"]], 1)


def _config(spec, *more):
    return load_config("synth", [f"model.word_embeddings={spec}", "model.hidden_dim=16", "data.image_size=32", *more])


def test_glove_rows_equal_the_file_and_coverage_is_reported(tmp_path, vocab, caplog):
    table = vectors(["a", "Red", "circle", "blue", "square", "unused"])  # no 'zorblat'; 'Red' capitalised
    path = tmp_path / "glove.6d.txt"
    path.write_text("".join(f"{w} " + " ".join(f"{x:.6f}" for x in v) + "\n" for w, v in table.items()))
    with caplog.at_level(logging.INFO, logger="showtell"):
        model = build_model(_config(f"glove:{path}"), vocab)
    weight = model.decoder.embed.weight
    assert weight.shape == (len(vocab), 6)  # the embedding size follows the vectors, not model.embed_dim
    for word in ("a", "circle", "blue", "square"):
        assert torch.allclose(weight[vocab.index[word]], torch.from_numpy(table[word]), atol=1e-6)
    assert torch.allclose(weight[vocab.index["red"]], torch.from_numpy(table["Red"]), atol=1e-6)
    assert torch.all(weight[0] == 0)  # <pad>
    assert "cover 83.3% of the 6 vocabulary words (6-d)" in caplog.text


def test_word2vec_text_and_binary(tmp_path, vocab):
    table = vectors(["a", "red", "circle", "blue"], dim=5, seed=1)
    text = tmp_path / "w2v.vec"
    text.write_text(f"{len(table)} 5\n" + "".join(f"{w} " + " ".join(map(str, v)) + "\n" for w, v in table.items()))
    binary = tmp_path / "w2v.bin"
    with open(binary, "wb") as f:
        f.write(f"{len(table)} 5\n".encode())
        for w, v in table.items():
            f.write(w.encode() + b" " + struct.pack("<5f", *v) + b"\n")
    for path in (text, binary):
        weight = build_model(_config(f"word2vec:{path}"), vocab).decoder.embed.weight
        for word, v in table.items():
            assert torch.allclose(weight[vocab.index[word]], torch.from_numpy(v), atol=1e-5), (path, word)


def test_spacy_vectors(tmp_path, vocab):
    spacy = pytest.importorskip("spacy", reason="spaCy is not installed")
    nlp = spacy.blank("en")
    table = vectors(["red", "square"], dim=4, seed=2)
    for word, v in table.items():
        nlp.vocab.set_vector(word, v)
    nlp.to_disk(tmp_path / "pipeline")
    weight = build_model(_config(f"spacy:{tmp_path / 'pipeline'}"), vocab).decoder.embed.weight
    assert weight.shape[1] == 4
    assert torch.allclose(weight[vocab.index["red"]], torch.from_numpy(table["red"]))


def test_frozen_embeddings_do_not_move_and_the_run_records_their_size(tmp_path, synth_dir):
    from showtell.training.entry import train

    records = read_annotations(str(synth_dir / "dataset.json"), None)
    words = sorted({w for r in records for t in r.tokens for w in t})
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} " + " ".join(map(str, v)) + "\n" for w, v in vectors(words, dim=12).items()))
    config = _config(f"glove:{path}", "model.freeze_embeddings=true", "train.epochs=1", "train.batch_size=16")
    train(config, records, tmp_path / "run", show_progress=False)
    from showtell.inference.torch_runtime import load_model

    saved, vocab, model = load_model(tmp_path / "run")
    assert saved.model.embed_dim == 12
    assert torch.allclose(model.decoder.embed.weight[vocab.index["circle"]], torch.from_numpy(vectors(words, 12)["circle"]))


def test_bad_vector_sources(tmp_path, vocab):
    from showtell.errors import ConfigError

    with pytest.raises(ConfigError, match="not found"):
        build_model(_config(f"glove:{tmp_path / 'none.txt'}"), vocab)
    other = tmp_path / "other.txt"
    other.write_text("zebra 1 2 3\n")
    with pytest.raises(ConfigError, match="covers none of the 6 vocabulary words"):
        build_model(_config(f"glove:{other}"), vocab)
    with pytest.raises(ConfigError, match="expected 'glove:PATH'"):
        load_config(None, ["model.word_embeddings=fasttext:x"])
