"""The model card (RUN/README.md): written by training, rewritten by evaluate, copied by export."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from showtell.cli import main
from showtell.reporting.modelcard import write_model_card


def read_metadata(card_text: str) -> dict:
    """The YAML block at the top of a model card, as the hubs read it."""
    assert card_text.startswith("---\n"), "a model card starts with a '---' line"
    return yaml.safe_load(card_text[4:].split("\n---\n", 1)[0])


def _card(folder):
    text = (folder / "README.md").read_text()
    return text, read_metadata(text)


def test_training_writes_a_card_whose_metadata_matches_the_run(trained_run, synth_dir, tmp_path):
    assert (trained_run / "README.md").is_file() and (trained_run / "training.json").is_file()
    # the card as training left it (other tests may have evaluated the shared run since)
    run = shutil.copytree(trained_run, tmp_path / trained_run.name, ignore=shutil.ignore_patterns("evaluations"))
    write_model_card(run)
    text, meta = _card(run)
    config = json.loads((trained_run / "config.json").read_text())
    vocab = json.loads((trained_run / "vocab.json").read_text())
    training = json.loads((trained_run / "training.json").read_text())
    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]

    assert meta["library_name"] == "showtell" and meta["pipeline_tag"] == "image-to-text"
    assert "image-captioning" in meta["tags"] and f"encoder-{config['model']['encoder']}" in meta["tags"]
    assert meta["datasets"] == ["dataset.json"]
    assert {"bleu", "cider"} <= set(meta["metrics"])
    (entry,) = meta["model-index"]
    assert entry["name"] == trained_run.name
    # before any evaluate: the best validation scores
    best = [r for r in history if r["best"]][-1]
    (result,) = entry["results"]
    assert result["dataset"]["split"] == "validation"
    by_name = {m["name"].split(" ")[0]: m["value"] for m in result["metrics"]}
    assert by_name["CIDEr"] == pytest.approx(best["val_CIDEr"], abs=1e-4)

    # the text: sizes, parameters, data, time, samples, how to load it, limitations
    from safetensors import safe_open

    with safe_open(str(trained_run / "model.safetensors"), "pt") as f:
        params = sum(f.get_tensor(k).numel() for k in f.keys())
    assert f"Parameters: {params:,}" in text
    assert f"Vocabulary: {len(vocab['words'])} words" in text
    assert f"hidden size {config['model']['hidden_dim']}" in text and f"embeddings {config['model']['embed_dim']}" in text
    assert f"{training['train_images']} training and {training['val_images']} validation pictures" in text
    assert training["steps"] == history[-1]["step"] and training["seconds"] > 0
    assert str(synth_dir / "dataset.json") in text
    assert "## Sample captions" in text and history[-1]["val_samples"][0]["caption"] in text
    assert "Captioner.load" in text and "showtell serve" in text and "## Limitations" in text


def test_evaluate_rewrites_the_card_with_scores_and_export_copies_it(trained_run, synth_dir, tmp_path, capsys):
    assert main(["--quiet", "evaluate", str(trained_run), "--data", str(synth_dir / "dataset.json"),
                 "--beam-size", "3", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    text, meta = _card(trained_run)
    kept = json.loads((trained_run / "evaluations" / "test-beam3.json").read_text())
    results = meta["model-index"][0]["results"]
    beam3 = next(r for r in results if any("(beam 3)" in m["name"] for m in r["metrics"]))
    assert beam3["dataset"]["split"] == "test"
    values = {m["name"]: m["value"] for m in beam3["metrics"]}
    assert values["CIDEr (beam 3)"] == pytest.approx(scores["CIDEr"], abs=1e-4)
    assert values["Bleu_4 (beam 3)"] == pytest.approx(scores["Bleu_4"], abs=1e-4)
    human = kept["human"]["CIDEr"]
    assert f"| test | beam 3 | {scores['n_images']} | CIDEr | {scores['CIDEr']:.4f} | {human:.4f} |" in text
    assert kept["predictions"][0]["caption"] in text
    # object hallucination beside the n-gram scores (the built-in scenes have their objects)
    assert f"| test | beam 3 | {scores['n_images']} | CHAIR_s (captions naming an absent object) | {scores['CHAIR_s']:.4f} |" in text
    assert f"| CHAIR_i (objects named that are absent) | {scores['CHAIR_i']:.4f} |" in text
    assert f"| object recall | {scores['object_recall']:.4f} |" in text

    out = tmp_path / "package"
    assert main(["--quiet", "export", str(trained_run), str(out)]) == 0
    assert (out / "README.md").read_text() == text

    # the first 4 pictures' scores are kept under their own name and are not the model's score on the split
    capsys.readouterr()
    assert main(["--quiet", "evaluate", str(trained_run), "--data", str(synth_dir / "dataset.json"),
                 "--beam-size", "3", "--max-images", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_images"] == 4
    assert json.loads((trained_run / "evaluations" / "test-beam3-first4.json").read_text())["max_images"] == 4
    assert _card(trained_run)[0] == text
