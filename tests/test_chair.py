"""CHAIR object hallucination, against counts made by hand: synonyms, plurals, multi-word names
("hot dog" is not a dog, "teddy bear" not a bear), ground truth from COCO instance annotations
plus what the references name, and from the shapes `showtell synth` drew."""

from __future__ import annotations

import json

import pytest

from showtell.cli import main
from showtell.evaluation.chair import COCO_SYNONYMS, SYNTH_SYNONYMS, ObjectWords, chair, coco_objects, synth_objects

COCO = ObjectWords(COCO_SYNONYMS)


def _instances(path, images: dict[str, list[str]]):
    names = sorted({c for cats in images.values() for c in cats} | {"cat", "couch"})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    ids = {n: i + 1 for i, n in enumerate(names)}
    data = {"images": [{"id": k + 1, "file_name": f} for k, f in enumerate(images)], "categories": categories,
            "annotations": [{"id": 100 * (k + 1) + j, "image_id": k + 1, "category_id": ids[c]}
                            for k, cats in enumerate(images.values()) for j, c in enumerate(cats)]}
    path.write_text(json.dumps(data))
    return path


def test_mentions_take_the_longest_name_and_plurals():
    assert COCO.mentions("Two men walking puppies past a hot dog stand.") == ["person", "dog", "hot dog"]
    assert COCO.mentions("a teddy bear on a bed") == ["teddy bear", "bed"]
    assert COCO.mentions("a bear eating hotdogs") == ["bear", "hot dog"]
    assert COCO.mentions("cars at the traffic lights, a knives block") == ["car", "traffic light", "knife"]
    assert COCO.mentions("a woman's skis and a ski") == ["person", "skis", "skis"]  # possessive: womans
    assert COCO.mentions("three buses and two sofas") == ["bus", "couch"]


def test_chair_on_coco_instances_counted_by_hand(tmp_path):
    path = _instances(tmp_path / "instances.json", {
        "1.jpg": ["person", "dog"], "2.jpg": ["teddy bear", "bed"], "3.jpg": ["car", "traffic light", "truck"],
        "4.jpg": []})
    truth = coco_objects(path, {"4.jpg": ["A cat on a couch.", "a kitten napping"]})
    assert truth["4.jpg"] == {"cat", "couch"} and truth["1.jpg"] == {"person", "dog"}
    captions = {"1.jpg": "Two men walking puppies past a hot dog stand",   # person, dog, hot dog (wrong)
                "2.jpg": "a teddy bear lying on a bed next to a cat",        # teddy bear, bed, cat (wrong)
                "3.jpg": "a car stopped at traffic lights behind another car",  # car, traffic light; truck missed
                "4.jpg": "a kitty sitting on a sofa"}                        # cat, couch (from the references)
    result = chair(captions, truth, COCO)
    assert result["CHAIR_i"] == pytest.approx(2 / 10)      # 2 wrong of 3 + 3 + 2 + 2 named
    assert result["CHAIR_s"] == pytest.approx(2 / 4)
    assert result["object_recall"] == pytest.approx(8 / 9)  # only the truck is missed
    assert result["hallucinated"] == {"1.jpg": ["hot dog"], "2.jpg": ["cat"], "3.jpg": [], "4.jpg": []}


def test_synth_ground_truth_is_the_shapes_drawn(synth_dir):
    truth = synth_objects(synth_dir / "dataset.json")
    data = json.loads((synth_dir / "dataset.json").read_text())
    first = data["images"][0]
    assert truth[first["filename"]] == {o["shape"] for o in first["scene"]["objects"]}
    words = ObjectWords(SYNTH_SYNONYMS)
    result = chair({"x": "a red circle to the left of two blue squares"}, {"x": {"circle", "triangle"}}, words)
    assert (result["CHAIR_i"], result["CHAIR_s"], result["object_recall"]) == (0.5, 1.0, 0.5)
    assert synth_objects(tmp := synth_dir / "images" / first["filename"]) == {} and tmp.exists()


def test_evaluate_reports_chair_on_the_built_in_scenes_and_checks_objects_files(trained_run, synth_dir, tmp_path, capsys):
    data = str(synth_dir / "dataset.json")
    assert main(["--quiet", "evaluate", str(trained_run), "--data", data, "--max-images", "5", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["chair_captions"] == 5 and 0 <= scores["CHAIR_i"] <= 1 and 0 <= scores["object_recall"] <= 1
    other = _instances(tmp_path / "instances.json", {"elsewhere.jpg": ["dog"]})
    assert main(["--quiet", "evaluate", str(trained_run), "--data", data, "--max-images", "5", "--objects", str(other)]) == 2
    assert "none of the split's pictures" in capsys.readouterr().err


def test_report_marks_the_hallucinated_words():
    from showtell.evaluation.chair import marked_words
    from showtell.evaluation.report import _marked

    caption = "a dog next to a hot dog and a teddy bear"
    positions = marked_words(caption, ["hot dog", "teddy bear"], COCO)
    assert positions == [5, 6, 9, 10]
    assert _marked(caption, positions) == "a dog next to a <mark>hot</mark> <mark>dog</mark> and a <mark>teddy</mark> <mark>bear</mark>"
