"""`showtell evaluate`: scores, one JSON object, and a report that shows every picture."""

from __future__ import annotations

import json
import re

import pytest
from conftest import run_cli

from showtell.evaluation.metrics import score


def test_evaluate_json_is_one_object_matching_the_reference_scorer(trained_run, synth_dir):
    done = run_cli("evaluate", str(trained_run), "--data", str(synth_dir / "dataset.json"), "--json",
                   "--beam-size", "2", timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    scores = json.loads(done.stdout)  # exactly one JSON document on stdout
    assert done.stdout.count("\n") == 1
    for name in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr", "perplexity"):
        assert name in scores
    assert scores["n_images"] == 8 and scores["beam_size"] == 2 and scores["perplexity"] > 1.0

    # recompute from the captions the report shows: the same numbers
    from showtell.evaluation.evaluate import evaluate_run

    report = evaluate_run(trained_run, [str(synth_dir / "dataset.json")], None, "test", beam_size=2,
                          write_html=False, show_progress=False, metrics=("Bleu_4", "CIDEr"))
    refs = {str(i): r.captions for i, r in enumerate(report["records"])}
    cands = {str(i): res.caption for i, res in enumerate(report["results"])}
    again = score(refs, cands, ("Bleu_4", "CIDEr"))
    assert again["CIDEr"] == pytest.approx(scores["CIDEr"], abs=1e-9)
    assert again["Bleu_4"] == pytest.approx(scores["Bleu_4"], abs=1e-9)


def test_report_has_every_picture_caption_reference_and_plots(trained_run, synth_dir):
    done = run_cli("evaluate", str(trained_run), "--data", str(synth_dir / "dataset.json"), "--beam-size", "3",
                   timeout=300)
    assert done.returncode == 0, done.stderr[-1500:]
    assert "CIDEr" in done.stdout and "human" in done.stdout and "perplexity" in done.stdout
    page = (trained_run / "report.html").read_text()
    data = json.loads((synth_dir / "dataset.json").read_text())
    test = [im for im in data["images"] if im["split"] == "test"]
    thumbs = re.findall(r"src='report_files/(thumb\d+\.jpg)'", page)
    assert len(thumbs) == len(test)
    assert all((trained_run / "report_files" / t).is_file() for t in thumbs)
    for im in test:
        assert im["filename"] in page
        assert im["sentences"][0]["raw"].replace("'", "&#x27;") in page
    assert page.count("<ol class=alts>") == len(test) and "CIDEr" in page
    assert (trained_run / "report_files" / "loss.png").is_file()
    assert (trained_run / "report_files" / "metrics.png").is_file()
    ciders = [float(x) for x in re.findall(r"CIDEr (\d+\.\d+)</div>", page)]
    assert ciders == sorted(ciders)  # worst first


def test_sample_captions_stay_inside_their_own_column(tmp_path, synth_dir, monkeypatch):
    """samples.png: the longest captions the scenes have, bold, wrap within the picture's column
    (at 34 characters a line they ran into the next picture's caption)."""
    import showtell.reporting.figures as figures

    kept = []
    monkeypatch.setattr(figures, "_save_figure", lambda fig, path: kept.append(fig))
    long = "three shapes in a row on a white background: a small green square, a large yellow triangle and a small yellow triangle"
    pictures = sorted((synth_dir / "images").iterdir())[:8]
    figures.samples_figure(pictures, [long] * 8, [long] * 8, tmp_path / "samples.png")
    fig = kept[0]
    renderer = fig.canvas.get_renderer()
    for ax, right in zip(fig.axes, [*fig.axes[1:4], None] * 2):
        limit = right.get_window_extent(renderer).x0 if right is not None else fig.bbox.x1
        for text in ax.texts:
            assert text.get_window_extent(renderer).x1 < limit, text.get_text()[:40]
