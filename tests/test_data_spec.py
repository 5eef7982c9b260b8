"""`--data` values, 'FILE' or 'SPLIT=FILE', read by one parser (data.formats.parse_data_spec) that
every caller uses: reading the annotations, the path a run keeps for --resume, the model card's
dataset names and evaluate's CHAIR. A path holding '=' is split only after a split name."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from showtell.cli.commands import _absolute
from showtell.data.formats import parse_data_spec, read_annotations
from showtell.reporting.modelcard import _dataset_names


@pytest.mark.parametrize("spec, parsed", [
    ("captions.json", (None, "captions.json")),
    ("val=captions.json", ("val", "captions.json")),
    ("test=a=b.json", ("test", "a=b.json")),            # split at the first '=', the rest is the path
    ("a=b.json", (None, "a=b.json")),                   # not a split name: the whole text is a path
    ("trainset=x.json", (None, "trainset=x.json")),
    ("dir=1/train=x.json", (None, "dir=1/train=x.json")),
    ("Val=x.json", (None, "Val=x.json")),               # split names are exact
])
def test_a_split_is_read_only_before_the_first_equals_sign_and_only_if_it_is_a_split(spec, parsed):
    assert parse_data_spec(spec) == parsed


def _table(folder: Path) -> Path:
    """A CSV of two pictures, with no split column, in a folder whose name holds '='."""
    folder.mkdir(parents=True)
    for i in range(2):
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(folder / f"p{i}.png")
    path = folder / "k=v.csv"
    path.write_text("image,caption\np0.png,a blue square\np1.png,a red circle\n")
    return path


def test_every_caller_reads_a_path_holding_equals_signs_the_same_way(tmp_path):
    path = _table(tmp_path / "set=1")
    forced = read_annotations(f"val={path}", None)
    assert [r.split for r in forced] == ["val", "val"]
    whole = read_annotations(str(path), None, "0.0,0.0,1.0")   # no split forced: the ratio decides
    assert [r.split for r in whole] == ["test", "test"]
    # the run keeps the same split and file, made absolute (before, 'val=...k=v.csv' lost its split)
    assert _absolute(f"val={path}") == f"val={path.resolve()}"
    assert _absolute(str(path)) == str(path.resolve())
    # the model card names the file, not what follows its last '='
    assert _dataset_names({"data": [f"val={path}", str(path)]}) == ["k=v.csv"]
