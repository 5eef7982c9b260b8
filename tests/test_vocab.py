"""Karpathy-style preprocessing and the vocabulary file."""

from __future__ import annotations

from showtell.vocab import END, PAD, SPECIALS, START, UNK, Vocabulary, tokenize


def test_tokenize_like_karpathy():
    assert tokenize("A Dog's ball, on the GRASS!  ") == ["a", "dogs", "ball", "on", "the", "grass"]
    assert tokenize("two-tone (red/white) bus.") == ["twotone", "redwhite", "bus"]
    assert tokenize("...") == []


def test_build_counts_orders_and_cuts():
    captions = [["a", "red", "circle"], ["a", "blue", "circle"], ["a", "red", "square"], ["one", "zebra"]]
    vocab = Vocabulary.build(captions, min_word_count=2)
    assert vocab.words[:4] == list(SPECIALS)
    assert vocab.words[4:] == ["a", "circle", "red"]  # by count, then alphabetically
    ids = vocab.encode(["a", "red", "zebra"])
    assert ids == [START, vocab.index["a"], vocab.index["red"], UNK, END]
    assert vocab.encode(["a", "red", "circle"], max_words=2) == [START, vocab.index["a"], vocab.index["red"], END]
    assert vocab.decode([START, vocab.index["red"], vocab.index["circle"], END, vocab.index["a"], PAD]) == "red circle"


def test_save_and_reload_bit_for_bit(tmp_path):
    vocab = Vocabulary.build([["über", "café", "a"], ["a", "b"]], min_word_count=1)
    vocab.save(tmp_path / "vocab.json")
    again = Vocabulary.load(tmp_path / "vocab.json")
    assert again == vocab and again.min_word_count == 1
    again.save(tmp_path / "again.json")
    assert (tmp_path / "vocab.json").read_bytes() == (tmp_path / "again.json").read_bytes()
