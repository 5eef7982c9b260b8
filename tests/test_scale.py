"""COCO scale at reduced size (issue 14): the generated scale set has COCO's statistics, the feature
cache is shared with DataLoader workers rather than copied, and the faster annotation path gives
exactly what the straightforward one gave."""

from __future__ import annotations

import json
import pickle
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from showtell.data.batching import CaptionTable, collate, make_loader
from showtell.data.features import FeatureCache
from showtell.data.formats import read_annotations
from showtell.errors import DataError
from showtell.vocab import END, PAD, START, UNK, Vocabulary, tokenize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coco_scale  # noqa: E402


@pytest.fixture(scope="module")
def scale_file(tmp_path_factory) -> Path:
    return coco_scale.write_annotations(tmp_path_factory.mktemp("scale") / "dataset_coco.json", scale=0.02, seed=3)


def test_scale_set_has_cocos_shape(scale_file):
    stats = coco_scale.statistics(scale_file)
    assert stats["splits"] == {"train": 1656, "restval": 610, "val": 100, "test": 100}
    # 616,767 captions for 123,287 pictures: 5 each, the rest as a few 6th and 7th captions
    assert stats["captions"] == round(616_767 * stats["images"] / 123_287)
    assert set(stats["captions_per_image"]) == {5, 6, 7} and stats["captions_per_image"][5] > 0.99 * stats["images"]
    assert 10.3 < stats["mean_length"] < 10.7
    # the words follow the law that gives COCO's vocabulary at full size
    seen, kept = coco_scale.expected_vocabulary(stats["train_tokens"])
    assert abs(stats["raw_words"] / seen - 1) < 0.03 and abs(stats["kept_words"] / kept - 1) < 0.05
    assert coco_scale.generate(0.002, seed=3) == coco_scale.generate(0.002, seed=3)
    assert coco_scale.generate(0.002, seed=3) != coco_scale.generate(0.002, seed=4)
    records = read_annotations(str(scale_file), scale_file.parent)
    assert Counter(r.split for r in records) == {"train": 2266, "val": 100, "test": 100}   # restval is train


def test_full_scale_vocabulary_law():
    """At COCO's size (113,287 training pictures, ~5 captions of 10.5 words) the law gives about
    25,000 distinct training words, about 10,000 of them seen at least 5 times."""
    seen, kept = coco_scale.expected_vocabulary(113_287 * 5.0027 * 10.5)
    assert 24_000 < seen < 26_000 and 9_500 < kept < 10_500


# ---------------------------------------------------------------------------------------------
# the annotation path: the straightforward implementation it replaced, kept here as the reference

def reference_karpathy_tokens(sentence) -> tuple[str, list[str]]:
    raw = sentence.get("raw")
    if raw is None and isinstance(sentence.get("tokens"), list):
        raw = " ".join(map(str, sentence["tokens"]))
    tokens = tokenize(raw)
    assert tokens
    if isinstance(sentence.get("tokens"), list) and all(isinstance(t, str) for t in sentence["tokens"]):
        tokens = [t.lower() for t in sentence["tokens"] if t.strip()] or tokens
    return raw.strip(), tokens


def reference_table(records, vocab: Vocabulary, max_words: int) -> torch.Tensor:
    encoded = [vocab.encode(tokens, max_words) for r in records for tokens in r.tokens]
    width = max((len(e) for e in encoded), default=2)
    ids = torch.full((len(encoded), width), PAD, dtype=torch.long)
    for row, e in enumerate(encoded):
        ids[row, : len(e)] = torch.tensor(e)
    return ids


def awkward_file(tmp_path: Path, scale_file: Path) -> Path:
    """The scale set plus the sentences real files hold: upper-case and blank tokens, tokens that
    are not text, no tokens at all, only tokens, punctuation, non-ASCII white space."""
    data = json.loads(scale_file.read_text())
    odd = [{"raw": "A Dog's ball.", "tokens": ["A", "Dogs", " ", "BALL"]},
           {"raw": "two  cats!", "tokens": []},
           {"raw": "One\u00a0bird, flying", "tokens": ["one", "", "bird"]},
           {"raw": "Numbers 3 and 4", "tokens": ["numbers", 3, "and", 4]},
           {"raw": "nothing but raw text here"},
           {"tokens": ["only", "Tokens", "here"]},
           {"raw": " padded raw ", "tokens": ["  ", "\t"]},
           {"raw": "a very long caption " + "word " * 30, "tokens": ["a", "very", "long", "caption"] + ["word"] * 30}]
    for i, sentence in enumerate(odd):
        data["images"][i]["sentences"].append(sentence)
    path = tmp_path / "awkward.json"
    path.write_text(json.dumps(data))
    return path


def test_fast_annotation_path_equals_the_reference(tmp_path, scale_file):
    path = awkward_file(tmp_path, scale_file)
    data = json.loads(path.read_text())
    records = read_annotations(str(path), path.parent)
    for record, item in zip(records, data["images"]):
        expected = [reference_karpathy_tokens(s) for s in item["sentences"]]
        assert record.captions == [c for c, _ in expected]
        assert record.tokens == [t for _, t in expected]
    assert records[0].tokens[-1] == ["a", "dogs", "ball"] and records[3].tokens[-1] == tokenize("Numbers 3 and 4")
    train = [r for r in records if r.split == "train"]
    counts = Counter(w for r in train for t in r.tokens for w in t)
    vocab = Vocabulary.build((t for r in train for t in r.tokens), 5)
    assert vocab.words[4:] == sorted((w for w, c in counts.items() if c >= 5), key=lambda w: (-counts[w], w))
    for max_words in (16, 0):
        table = CaptionTable(records, vocab, max_words)
        assert torch.equal(table.ids, reference_table(records, vocab, max_words))
    assert int((table.ids == UNK).sum()) > 0 and table.ids.dtype == torch.long
    assert CaptionTable([], vocab, 16).ids.shape == (0, 2)


def test_caption_table_rows_by_hand():
    from showtell.data.formats import ImageRecord

    vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "a", "dog"])
    records = [ImageRecord("1", Path("x"), "train", ["a dog", "dog"], [["a", "dog"], ["dog"]]),
               ImageRecord("2", Path("y"), "train", ["a cat a dog"], [["a", "cat", "a", "dog"]])]
    table = CaptionTable(records, vocab, 3)
    assert table.ids.tolist() == [[START, 4, 5, END, PAD], [START, 5, END, PAD, PAD], [START, 4, UNK, 4, END]]
    assert table.offsets == [0, 2] and table.counts == [2, 1]


# ---------------------------------------------------------------------------------------------
# the feature cache under DataLoader workers

@pytest.fixture(scope="module")
def scale_cache(tmp_path_factory, scale_file) -> FeatureCache:
    out = tmp_path_factory.mktemp("cache") / "features"
    coco_scale.write_feature_cache(out, scale_file, fraction=0.05, seed=1)
    return FeatureCache.open(out)


def test_scale_cache_is_prepares_format(scale_cache):
    manifest = scale_cache.manifest
    n = len(manifest["records"])
    assert n == round(0.05 * 2466) and manifest["shapes"] == {"global": [n, 2048], "grid": [n, 49, 2048]}
    assert np.load(scale_cache.path / "grid.npy", mmap_mode="r").dtype == np.float16
    assert np.all(np.load(scale_cache.path / "done.npy")) and Vocabulary.load(scale_cache.path / "vocab.json")
    assert set(scale_cache.encoder_state()) and {r.split for r in scale_cache.records()} == {"train", "val", "test"}


def test_workers_share_the_cache_and_read_the_same_batches(scale_cache):
    images = scale_cache.split_set(scale_cache.records())
    # opening the arrays here (as reading a batch in this process does) must not make them travel
    arrays = {name: np.load(scale_cache.path / f"{name}.npy", mmap_mode="r") for name in images.outputs}
    images[0]
    array_bytes = sum(a.nbytes for a in arrays.values())
    assert len(pickle.dumps(images)) < 0.01 * array_bytes   # no copy of the features in the pickle
    batches = [[5, 0, 17], [3], list(range(40, 60)), [60, 2, 59, 1]]
    read = lambda workers: list(make_loader(images, batches, workers))  # noqa: E731
    serial, parallel = read(0), read(2)
    for (ids, feats, bad), (ids2, feats2, bad2), batch in zip(serial, parallel, batches):
        assert ids.tolist() == ids2.tolist() == batch and bad == bad2 == []
        for name in ("global", "grid"):
            assert torch.equal(feats[name], feats2[name])
            # the batched read equals reading the rows one at a time, in batch order
            rows = [images.rows[i] for i in batch]
            assert torch.equal(feats[name], torch.stack([collate([images[i]])[1][name][0] for i in batch]))
            assert feats[name].dtype == torch.float16
            assert torch.equal(feats[name], torch.from_numpy(arrays[name][rows].copy()))


def test_collate_takes_a_batch_block_without_copying(scale_cache):
    images = scale_cache.split_set(scale_cache.records())
    items = images.__getitems__([4, 1, 9])
    _, stacked, _ = collate(items)
    for name, block in stacked.items():
        assert torch.equal(block, torch.stack([x[name] for _, x, _ in items]))
        assert block.data_ptr() == items[0][1][name].data_ptr()   # the read's own block, not a copy
    # rows of one block in another order, or only some of them, are stacked (copied) as usual
    for chosen in ([items[2], items[0], items[1]], items[:2], [items[1], items[1], items[2]]):
        _, stacked, _ = collate(chosen)
        for name, block in stacked.items():
            assert torch.equal(block, torch.stack([x[name] for _, x, _ in chosen]))


def test_records_hold_no_object_of_the_parsed_file(tmp_path, scale_file):
    """A record that keeps one parsed string pins the allocator block it lives in, so the memory
    of the whole parsed file (about 1 GB at COCO size) could never go back to the system."""
    from showtell.data.formats import _KarpathyReader

    path = awkward_file(tmp_path, scale_file)
    data = json.loads(path.read_text())
    parsed = set()
    for item in data["images"]:
        parsed.update(id(v) for v in item.values())
        for sentence in item["sentences"]:
            parsed.update(id(v) for v in sentence.values())
            parsed.update(id(t) for t in sentence.get("tokens", []))
    reader = _KarpathyReader(path, path.parent)
    for i, item in enumerate(data["images"]):
        reader.image(item, i)
    records = reader.finish()
    held = [r.split for r in records] + [c for r in records for c in r.captions]
    held += [v for r in records for v in r.extra.values()] + [t for r in records for ts in r.tokens for t in ts]
    assert not [v for v in held if id(v) in parsed and not (isinstance(v, int) and -5 <= v <= 256)]


@pytest.mark.parametrize("text", [
    '{"images": [1, 2}', '{"images": [1 2]}', '{"images" [1]}', '{images: []}', '{"images": [], }',
    '{"images": []} x', '{"images": [{"a": 1},]}', '', '   ', '{"a": 1', '{"images": [', '[1, 2',
])
def test_streamed_json_reports_errors_where_json_does(tmp_path, text):
    """The element-by-element reader names the same line and column as json.loads for broken files."""
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(DataError) as error:
        read_annotations(str(path), tmp_path)
    assert f"line {expected.value.lineno}, column {expected.value.colno}" in str(error.value)


def test_coco_members_in_any_order_and_spacing(tmp_path):
    """COCO files may list annotations before images and put white space anywhere; reading them
    element by element gives what reading the whole parsed file gives."""
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in (3, 1, 2)]
    annotations = [{"image_id": i % 3 + 1, "caption": f"Caption number {i}."} for i in range(9)]
    ordered = tmp_path / "ordered.json"
    ordered.write_text(json.dumps({"info": {"year": 2014}, "images": images, "annotations": annotations}))
    reversed_ = tmp_path / "reversed.json"
    reversed_.write_text(json.dumps({"annotations": annotations, "licenses": [{"id": 1}], "images": images}, indent="\t\n "))
    want = [(r.key, r.captions, r.tokens) for r in read_annotations(str(ordered), tmp_path)]
    got = [(r.key, r.captions, r.tokens) for r in read_annotations(str(reversed_), tmp_path)]
    assert got == want and len(want) == 3 and [len(c) for _, c, _ in want] == [3, 3, 3]
    missing = tmp_path / "missing.json"
    missing.write_text(json.dumps({"annotations": annotations + [{"image_id": 9, "caption": "x"}], "images": images}))
    with pytest.raises(DataError, match=r"annotations\[9\]: image_id 9 is not in 'images'"):
        read_annotations(str(missing), tmp_path)


def test_reading_never_builds_the_parsed_file(scale_file):
    """Memory traced while reading a Karpathy file, beyond what its records keep, stays well under
    what json.loads alone allocates for the parsed file (the text itself is counted)."""
    import tracemalloc

    tracemalloc.start()
    tree = json.loads(scale_file.read_text())
    tree_peak = tracemalloc.get_traced_memory()[1]
    del tree
    tracemalloc.stop()
    tracemalloc.start()
    records = read_annotations(str(scale_file), scale_file.parent)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(records) == 2466
    assert peak - kept < 0.35 * tree_peak, (peak - kept, tree_peak)


@pytest.mark.parametrize("workers", [0, 2])
def test_pictures_are_kept_as_the_first_epoch_decodes_them(tmp_path, workers):
    """With data.cache_images the first pass decodes each picture once, as training reaches it (no
    wait before the first step); later passes, also in workers started afterwards, read memory."""
    from PIL import Image

    from showtell.data.batching import ImageSet
    from showtell.data.formats import ImageRecord
    from showtell.data.images import ImageTransform

    rng = np.random.default_rng(0)
    records = []
    for i in range(10):
        path = tmp_path / f"p{i}.png"
        if i == 7:
            path.write_bytes(b"not a picture")
        else:
            Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(path)
        records.append(ImageRecord(str(i), path, "train", ["a caption"], [["a", "caption"]]))
    images = ImageSet(records, ImageTransform(crop=16, resize=16, mode="squash"))
    images.keep_decoded()
    assert not bool(images.cached.any()) and not images.bad          # nothing decoded up front
    plan = [[3, 1, 7], [0, 2, 4, 5], [9, 8, 6]]
    first = list(make_loader(images, plan, workers))
    assert bool(images.cached.sum() == 9) and not bool(images.cached[7]) and set(images.bad) == {7}
    for record in records:                                           # from now on only memory can answer
        record.path.unlink()
    second = list(make_loader(images, plan, workers))
    for (ids1, pictures1, bad1), (ids2, pictures2, bad2) in zip(first, second, strict=True):
        assert torch.equal(ids1, ids2) and torch.equal(pictures1, pictures2) and bad1 == bad2
    assert [i for _, _, bad in second for i, _ in bad] == [7]
