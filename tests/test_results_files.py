"""COCO results files (`evaluate --results`, `caption --coco-results`) and the evaluations kept in a run."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from PIL import Image

from showtell.cli import main

SCORED = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def _coco_annotations(synth_dir, out, id_offset=390000):
    """The synthetic test pictures as a COCO captions file, with ids unlike their positions."""
    data = json.loads((synth_dir / "dataset.json").read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    images = [{"id": id_offset + im["cocoid"], "file_name": f"images/{im['filename']}"} for im in test]
    annotations = [{"id": 10 * (id_offset + im["cocoid"]) + k, "image_id": id_offset + im["cocoid"], "caption": s["raw"]}
                   for im in test for k, s in enumerate(im["sentences"])]
    out.write_text(json.dumps({"images": images, "annotations": annotations, "type": "captions",
                               "info": {}, "licenses": []}))
    return {im["id"] for im in images}


class _NoSpice:   # SPICE needs a download of Stanford models; the others are what evaluate reports here
    def compute_score(self, gts, res):
        return 0.0, [0.0] * len(res)

    def method(self):
        return "SPICE"


def test_a_results_file_scores_the_same_in_pycocoevalcap(trained_run, synth_dir, tmp_path, java, monkeypatch):
    import pycocoevalcap.eval
    from pycocotools.coco import COCO

    from showtell.evaluation.evaluate import evaluate_run

    annotations = tmp_path / "captions_test.json"
    ids = _coco_annotations(synth_dir, annotations)
    results = tmp_path / "results.json"
    report = evaluate_run(trained_run, [f"test={annotations}"], str(synth_dir), "test", beam_size=1,
                          write_html=False, show_progress=False, results_file=results)
    written = json.loads(results.read_text())
    mask = os.umask(0o022)
    os.umask(mask)
    assert results.stat().st_mode & 0o777 == 0o666 & ~mask    # as open(path, "w") leaves it, not mkstemp's 0600
    assert {r["image_id"] for r in written} == ids and all(set(r) == {"image_id", "caption"} for r in written)

    monkeypatch.setattr(pycocoevalcap.eval, "Spice", _NoSpice)
    coco = COCO(str(annotations))
    evaluation = pycocoevalcap.eval.COCOEvalCap(coco, coco.loadRes(str(results)))
    evaluation.params["image_id"] = evaluation.cocoRes.getImgIds()
    evaluation.evaluate()
    for name in SCORED:
        assert report["scores"][name] == pytest.approx(evaluation.eval[name], abs=1e-12), name

    # the same evaluation is kept in the run, with the dataset's ids
    kept = json.loads((trained_run / "evaluations" / "test-greedy.json").read_text())
    assert kept["decoding"] == "greedy" and kept["split"] == "test"
    assert {name: kept["scores"][name] for name in SCORED} == {name: report["scores"][name] for name in SCORED}
    assert {p["image_id"]: p["caption"] for p in kept["predictions"]} == {r["image_id"]: r["caption"] for r in written}


def test_results_ids_are_the_datasets_own_for_karpathy_and_csv(trained_run, synth_dir, tmp_path, capsys):
    data = json.loads((synth_dir / "dataset.json").read_text())
    for im in data["images"]:
        im["cocoid"] = 5000 + im["imgid"]    # a Karpathy file's COCO id is not its position
    karpathy = tmp_path / "dataset_coco.json"
    karpathy.write_text(json.dumps(data))
    out = tmp_path / "karpathy.json"
    code = main(["--quiet", "evaluate", str(trained_run), "--data", str(karpathy), "--images", str(synth_dir),
                 "--beam-size", "2", "--max-images", "4", "--results", str(out)])
    assert code == 0, capsys.readouterr().err
    test = [im for im in data["images"] if im["split"] == "test"][:4]
    assert [r["image_id"] for r in json.loads(out.read_text())] == [im["cocoid"] for im in test]
    assert (trained_run / "evaluations" / "test-beam2-first4.json").is_file()   # not the whole split

    rows = [json.dumps({"image": f"images/{im['filename']}", "caption": s["raw"], "split": "test"})
            for im in test for s in im["sentences"]]
    table = tmp_path / "captions.jsonl"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "csv.json"
    code = main(["--quiet", "evaluate", str(trained_run), "--data", str(table), "--images", str(synth_dir),
                 "--beam-size", "1", "--results", str(out)])
    assert code == 0, capsys.readouterr().err
    assert [r["image_id"] for r in json.loads(out.read_text())] == [f"images/{im['filename']}" for im in test]


def test_caption_writes_coco_results_with_ids_from_file_names(trained_run, synth_dir, tmp_path, capsys):
    folder = tmp_path / "test2014"
    folder.mkdir()
    sources = sorted((synth_dir / "images").iterdir())[:3]
    for n, source in zip((1, 391895, 42), sources):
        Image.open(source).convert("RGB").save(folder / f"COCO_test2014_{n:012d}.jpg")
    out = tmp_path / "captions_test2014_showtell_results.json"
    assert main(["--quiet", "caption", str(trained_run), str(folder), "--beam-size", "1", "--coco-results", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    written = json.loads(out.read_text())
    assert sorted(r["image_id"] for r in written) == [1, 42, 391895]
    printed = {line.split("\t")[0].rsplit("_", 1)[1]: line.split("\t")[1] for line in lines}
    assert {r["image_id"]: r["caption"] for r in written} == {int(k[:-4]): v for k, v in printed.items()}


@pytest.mark.parametrize("args, message", [
    (["caption", "{run}", "{bad}", "--coco-results", "{tmp}/r.json"], "holiday.jpg has no COCO image id"),
    (["caption", "{run}", "{good}", "--coco-results", "{tmp}/missing/r.json"], "does not exist"),
    (["evaluate", "{run}", "--results", "{tmp}/missing/r.json"], "--results"),
    (["evaluate", "{run}", "--results", "{tmp}"], "is a folder"),
])
def test_results_file_mistakes_are_one_line(trained_run, synth_dir, tmp_path, capsys, args, message):
    bad = tmp_path / "holiday.jpg"
    good = tmp_path / "COCO_val2014_000000000007.jpg"
    for path in (bad, good):
        shutil.copyfile(sorted((synth_dir / "images").iterdir())[0], path)
    values = {"run": str(trained_run), "bad": str(bad), "good": str(good), "tmp": str(tmp_path)}
    code = main(["--quiet", *(a.format(**values) for a in args)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.json").exists()
