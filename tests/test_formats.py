"""Annotation formats: Karpathy, COCO, CSV and JSON Lines, read into the same records, and trained on."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from showtell.config import load_config
from showtell.data.formats import SPLITS, load_dataset, read_annotations
from showtell.errors import DataError
from showtell.training.entry import train

CAPTIONS = ["A red circle.", "a blue square", "Two green triangles!", "a yellow circle on the left", "one small square"]


def make_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    colours = [(220, 40, 40), (40, 80, 230), (40, 170, 60), (235, 205, 30)]
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), colours[i % 4]).save(folder / name)


def karpathy(tmp: Path) -> Path:
    splits = ["train", "train", "restval", "val", "test", "train"]
    images = []
    for i, split in enumerate(splits):
        images.append({"filepath": "train2014" if i % 2 else "val2014", "filename": f"im{i}.jpg", "split": split,
                       "cocoid": 100 + i,
                       "sentences": [{"raw": CAPTIONS[(i + k) % 5], "tokens": CAPTIONS[(i + k) % 5].lower().strip(".!").split()}
                                     for k in range(5)]})
    make_images(tmp / "images", [f"{im['filepath']}/{im['filename']}" for im in images])
    path = tmp / "dataset_coco.json"
    path.write_text(json.dumps({"images": images, "dataset": "coco"}))
    return path


def coco(tmp: Path, name: str, ids: list[int]) -> Path:
    folder = name.split("_")[1]
    files = [f"COCO_{folder}_{i:012d}.jpg" for i in ids]
    make_images(tmp / "images" / folder, files)
    data = {"images": [{"id": i, "file_name": f, "width": 40, "height": 30} for i, f in zip(ids, files)],
            "annotations": [{"id": 1000 + n, "image_id": i, "caption": CAPTIONS[(n + i) % 5]}
                            for i in ids for n in range(5)]}
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(data))
    return path


def split_counts(records) -> dict[str, int]:
    return {s: sum(r.split == s for r in records) for s in SPLITS}


def test_karpathy_split_counts_restval_as_train(tmp_path):
    records = read_annotations(str(karpathy(tmp_path)), tmp_path / "images")
    assert split_counts(records) == {"train": 4, "val": 1, "test": 1}
    first = records[0]
    assert first.key == "100" and first.path == tmp_path / "images" / "val2014" / "im0.jpg"
    assert first.captions[0] == "A red circle." and first.tokens[0] == ["a", "red", "circle"]


def test_coco_split_by_file_and_by_karpathy_split(tmp_path):
    train_file = coco(tmp_path, "captions_train2014", [1, 2, 3, 4])
    val_file = coco(tmp_path, "captions_val2014", [5, 6])
    config = load_config(None, [])
    records = load_dataset([f"train={train_file}", f"val={val_file}"], tmp_path / "images", config.data)
    assert split_counts(records) == {"train": 4, "val": 2, "test": 0}
    assert records[0].path.parent.name == "train2014" and len(records[0].captions) == 5
    assert records[0].tokens[0] == [w for w in records[0].captions[0].lower().strip(".!").split()]

    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"images": [
        {"cocoid": 1, "split": "train", "filename": "x", "sentences": []},
        {"cocoid": 2, "split": "restval", "filename": "x", "sentences": []},
        {"cocoid": 3, "split": "val", "filename": "x", "sentences": []},
        {"cocoid": 4, "split": "test", "filename": "x", "sentences": []}]}))
    config = load_config(None, [f"data.karpathy_split={split_file}"])
    records = load_dataset([str(train_file)], tmp_path / "images", config.data)
    assert {r.key: r.split for r in records} == {"1": "train", "2": "train", "3": "val", "4": "test"}


def test_coco_single_file_gets_a_seeded_ratio_split(tmp_path):
    path = coco(tmp_path, "captions_val2017", list(range(1, 21)))
    config = load_config(None, ["data.split_ratio=0.5,0.25,0.25", "data.split_seed=3"])
    a = load_dataset([str(path)], tmp_path / "images", config.data)
    b = load_dataset([str(path)], tmp_path / "images", config.data)
    assert split_counts(a) == {"train": 10, "val": 5, "test": 5}
    assert [r.split for r in a] == [r.split for r in b]


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_tables_with_and_without_split_column(tmp_path, kind):
    make_images(tmp_path / "pics", [f"p{i}.png" for i in range(6)])
    rows = [(f"p{i}.png", CAPTIONS[(i + k) % 5], ["train", "train", "train", "val", "test", "train"][i])
            for i in range(6) for k in range(3)]
    path = tmp_path / f"captions.{kind}"
    if kind == "csv":
        path.write_text("image,caption,split\n" + "".join(f'{im},"{c}",{s}\n' for im, c, s in rows))
    else:
        path.write_text("".join(json.dumps({"image": im, "caption": c, "split": s}) + "\n" for im, c, s in rows))
    records = read_annotations(str(path), tmp_path / "pics")
    assert split_counts(records) == {"train": 4, "val": 1, "test": 1}
    assert all(len(r.captions) == 3 for r in records)
    # without the split column: a seeded ratio
    plain = tmp_path / f"plain.{kind}"
    if kind == "csv":
        plain.write_text("image,caption\n" + "".join(f'{im},"{c}"\n' for im, c, _ in rows))
    else:
        plain.write_text("".join(json.dumps({"image": im, "caption": c}) + "\n" for im, c, _ in rows))
    records = read_annotations(str(plain), tmp_path / "pics", "0.5,0.5,0.0", 1)
    assert split_counts(records) == {"train": 3, "val": 3, "test": 0}


@pytest.mark.parametrize("make", ["karpathy", "coco", "csv"])
def test_a_few_training_steps_from_each_format(tmp_path, make):
    if make == "karpathy":
        specs, images = [str(karpathy(tmp_path))], tmp_path / "images"
    elif make == "coco":
        specs = [f"train={coco(tmp_path, 'captions_train2014', [1, 2, 3, 4])}",
                 f"val={coco(tmp_path, 'captions_val2014', [5, 6])}"]
        images = tmp_path / "images"
    else:
        make_images(tmp_path / "pics", [f"p{i}.png" for i in range(4)])
        path = tmp_path / "c.csv"
        path.write_text("image,caption,split\n" + "".join(f"p{i}.png,{CAPTIONS[i]},{'val' if i == 3 else 'train'}\n"
                                                          for i in range(4)))
        specs, images = [str(path)], tmp_path / "pics"
    config = load_config("synth", ["train.epochs=1", "train.batch_size=2", "model.hidden_dim=16", "model.embed_dim=8",
                                   "data.image_size=32"])
    records = load_dataset(specs, images, config.data)
    summary = train(config, records, tmp_path / "run", show_progress=False)
    assert summary["steps"] >= 2 and (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON (line 1, column 2"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 2, "caption": "x"}]}),
     "annotations[0]: image_id 2 is not in 'images'"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": "   "}]}),
     "annotations[0]: empty caption '   '"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}], "annotations": []}),
     "images[1]: duplicate image id 1"),
    (json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "a.jpg"}], "annotations": []}),
     "images[1]: a.jpg is listed twice"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": 5}]}]}),
     "images[0].sentences[0]: caption must be text, got int"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "dev", "sentences": [{"raw": "a cat"}]}]}),
     "images[0]: split must be train, val, test or restval, got 'dev'"),
    (json.dumps({"images": [{"filename": "a.jpg", "split": "train"}]}), "images[0] (a.jpg): missing or empty 'sentences'"),
    (json.dumps([1, 2, 3]), "unrecognised annotation format"),
])
def test_malformed_files_name_the_file_record_and_problem(tmp_path, content, message):
    path = tmp_path / "ann.json"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        read_annotations(str(path), tmp_path)
    assert str(error.value).startswith(str(path))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_non_utf8_and_bad_csv(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("image,caption\nx.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8 text"):
        read_annotations(str(path), tmp_path)
    path = tmp_path / "nocols.csv"
    path.write_text("file,text\nx.png,a cat\n")
    with pytest.raises(DataError, match="needs a header with 'image' and 'caption' columns"):
        read_annotations(str(path), tmp_path)


def test_missing_images_are_counted_and_skipped_only_when_asked(tmp_path):
    path = coco(tmp_path, "captions_train2014", [1, 2, 3, 4])
    (tmp_path / "images" / "train2014" / "COCO_train2014_000000000002.jpg").unlink()
    (tmp_path / "images" / "train2014" / "COCO_train2014_000000000003.jpg").unlink()
    with pytest.raises(DataError, match="2 of 4 listed images are missing .*data.skip_missing_images=true"):
        load_dataset([str(path)], tmp_path / "images", load_config(None, []).data)
    records = load_dataset([str(path)], tmp_path / "images", load_config(None, ["data.skip_missing_images=true"]).data)
    assert sorted(r.key for r in records) == ["1", "4"]


def test_csv_caption_with_a_quoted_line_break_stays_one_caption(tmp_path):
    make_images(tmp_path, ["a.png", "b.png"])
    path = tmp_path / "captions.csv"
    path.write_text('image,caption\na.png,"a, ""big"",\nthing"\nb.png,a small circle\n', encoding="utf-8")
    records = {r.key: r for r in read_annotations(str(path), None)}
    assert records["a.png"].tokens == [["a", "big", "thing"]]        # was ['a', 'bigthing']
    assert records["b.png"].tokens == [["a", "small", "circle"]]
    bad = tmp_path / "bad.csv"
    bad.write_text('image,caption\nb.png,x\na.png,"never closed\n' + "x" * 200_000 + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv: line \d+: not valid CSV \(field larger than field limit"):
        read_annotations(str(bad), None)


@pytest.mark.parametrize("kind", ["coco", "karpathy", "csv"])
@pytest.mark.parametrize("name", ["../../../../etc/passwd", "sub/../../outside.png", "/etc/passwd"])
def test_image_paths_that_leave_the_image_folder_are_refused_before_opening(tmp_path, monkeypatch, kind, name):
    images = tmp_path / "images"
    make_images(images, ["ok.png"])
    (tmp_path / "outside.png").write_bytes((images / "ok.png").read_bytes())
    if kind == "coco":
        data = {"images": [{"id": 1, "file_name": "ok.png"}, {"id": 2, "file_name": name}],
                "annotations": [{"image_id": 1, "caption": "a red circle"}, {"image_id": 2, "caption": "a blue square"}]}
        path = tmp_path / "captions_train2014.json"
        path.write_text(json.dumps(data))
    elif kind == "karpathy":
        data = {"images": [{"filepath": "", "filename": f, "split": "train", "sentences": [{"raw": "a red circle"}]}
                           for f in ("ok.png", name)]}
        path = tmp_path / "dataset.json"
        path.write_text(json.dumps(data))
    else:
        path = tmp_path / "captions.csv"
        path.write_text(f"image,caption\nok.png,a red circle\n{name},a blue square\n")
    opened = []
    real_exists, real_is_file = Path.exists, Path.is_file
    monkeypatch.setattr(Path, "exists", lambda self: opened.append(str(self)) or real_exists(self))
    monkeypatch.setattr(Path, "is_file", lambda self: opened.append(str(self)) or real_is_file(self))
    with pytest.raises(DataError, match="leaves the image folder|is absolute"):
        load_dataset([str(path)], str(images), load_config("synth").data)
    assert not any("passwd" in p or p.endswith("outside.png") for p in opened), opened


def test_absolute_image_paths_are_read_when_the_user_allows_them(tmp_path):
    images = tmp_path / "images"
    make_images(images, ["ok.png"])
    elsewhere = tmp_path / "elsewhere"
    make_images(elsewhere, ["far.png"])
    path = tmp_path / "captions.csv"
    path.write_text(f"image,caption\nok.png,a red circle\n{elsewhere / 'far.png'},a blue square\n")
    with pytest.raises(DataError, match="is absolute"):
        load_dataset([str(path)], str(images), load_config("synth").data)
    allowed = load_config("synth", ["data.allow_absolute_paths=true"]).data
    records = load_dataset([str(path)], str(images), allowed)
    assert sorted(r.path for r in records) == sorted([images / "ok.png", elsewhere / "far.png"])
