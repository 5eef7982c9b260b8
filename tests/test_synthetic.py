"""The built-in synthetic dataset."""

from __future__ import annotations

import hashlib
import json

from showtell.data.formats import read_annotations
from showtell.data.synthetic import COLOURS, SHAPES, write_dataset


def _digest(folder):
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    a, b, c = (write_dataset(tmp_path / n, 12, seed=s, side=64).parent for n, s in (("a", 1), ("b", 1), ("c", 2)))
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_karpathy_format_with_five_different_human_like_captions(synth_dir):
    data = json.loads((synth_dir / "dataset.json").read_text())
    assert {im["split"] for im in data["images"]} == {"train", "val", "test"}
    for image in data["images"]:
        assert {"filepath", "filename", "split", "sentences", "imgid"} <= set(image)
        raws = [s["raw"] for s in image["sentences"]]
        assert len(raws) == 5 and len({" ".join(s["tokens"]) for s in image["sentences"]}) == 5
        assert (synth_dir / image["filepath"] / image["filename"]).is_file()
        scene = image["scene"]
        words = " ".join(raws).lower()
        for obj in scene["objects"]:  # every object's colour and shape are mentioned somewhere
            assert obj["colour"] in words and obj["shape"] in words
        assert all(s["tokens"] == [t for t in s["tokens"] if t.islower()] for s in image["sentences"])


def test_spatial_relations_match_the_picture(synth_dir):
    data = json.loads((synth_dir / "dataset.json").read_text())
    checked = 0
    for image in data["images"]:
        objs, relation = image["scene"]["objects"], image["scene"]["relation"]
        for s in image["sentences"]:
            raw = s["raw"].lower()
            first = f"{objs[0]['colour']} {objs[0]['shape']}" if len(objs) == 2 else None
            if relation == "horizontal" and " to the left of " in raw and first and \
                    (objs[0]["colour"], objs[0]["shape"]) != (objs[1]["colour"], objs[1]["shape"]):
                before = raw.split(" to the left of ")[0]
                assert before.endswith(first), raw
                assert objs[0]["x"] < objs[1]["x"]
                checked += 1
    assert checked > 0


def test_readable_by_the_karpathy_reader(synth_dir):
    records = read_annotations(str(synth_dir / "dataset.json"), None)
    assert len(records) == 80
    assert {r.split for r in records} == {"train", "val", "test"}
    assert all(len(r.captions) == 5 and r.path.is_file() for r in records)
    assert set(COLOURS) and set(SHAPES)
