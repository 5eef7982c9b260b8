"""The NIC model learns: it memorises a tiny batch, and the same seed gives the same weights."""

from __future__ import annotations

import pytest
import torch

from showtell.config import load_config
from showtell.data.batching import CaptionTable, ImageSet
from showtell.data.formats import read_annotations
from showtell.decoding.search import greedy
from showtell.models.caption_model import build_model
from showtell.models.encoder import Encoder
from showtell.vocab import Vocabulary


def test_small_encoder_shapes_and_transform():
    encoder = Encoder("small", "none", 64)
    out = encoder(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))
    assert out["grid"].shape == (2, 16, 480) and out["global"].shape == (2, encoder.global_dim)
    assert encoder.transform.mode == "squash" and encoder.transform.crop == 64
    assert encoder.grid_size == 16


@pytest.mark.parametrize("injection", ["init_state", "first_input", "every_step"])
def test_overfits_a_tiny_batch_and_greedy_reads_the_captions_back(synth_dir, injection):
    records = [r for r in read_annotations(str(synth_dir / "dataset.json"), None)][:6]
    for r in records:  # one caption per picture, to be memorised
        r.captions, r.tokens = r.captions[:1], r.tokens[:1]
    config = load_config("synth", ["model.embed_dim=32", "model.hidden_dim=96", "model.dropout=0",
                                   f"model.image_injection={injection}", "data.image_size=32"])
    vocab = Vocabulary.build((t for r in records for t in r.tokens), 1)
    torch.manual_seed(0)
    model = build_model(config, vocab)
    images = ImageSet(records, model.transform)
    pictures = torch.stack([images[i][1] for i in range(len(records))])   # decoded once for the 300 steps
    table = CaptionTable(records, vocab, 30)
    tokens = table.batch(range(len(records)))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(300):
        model.train()
        out = model(tokens, images=pictures)
        loss = out.nll / out.words
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    assert loss.item() < 0.05, f"did not memorise 6 captions: loss {loss.item():.3f}"
    model.eval()
    with torch.no_grad():
        out = greedy(model, model.encode(pictures), max_length=30)
    for i, record in enumerate(records):
        words = out.sequences[i, 0, : int(out.lengths[i, 0])].tolist()
        assert vocab.decode(words) == " ".join(record.tokens[0])


def test_same_seed_same_weights_different_seed_different_weights(synth_dir, tmp_path, tiny_config_args):
    from showtell.cli import main
    from showtell.fileio import load_weights

    paths = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / name
        assert main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(out),
                     *tiny_config_args, "--set", "train.epochs=1", "--set", f"train.seed={seed}"]) == 0
        paths[name] = load_weights(out / "model.safetensors")
    assert paths["a"].keys() == paths["b"].keys()
    assert all(torch.equal(paths["a"][k], paths["b"][k]) for k in paths["a"])
    assert any(not torch.equal(paths["a"][k], paths["c"][k]) for k in paths["a"])
