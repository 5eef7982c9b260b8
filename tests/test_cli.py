"""The command line: the documented commands work, mistakes end in one line and a non-zero code."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_cli

from showtell.cli import main


def test_train_writes_a_complete_run(trained_run):
    for name in ("config.json", "vocab.json", "model.safetensors", "data.json", "history.jsonl"):
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["model"]["encoder"] == "small_narrow" and config["train"]["epochs"] == 2
    history = [json.loads(line) for line in (trained_run / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2
    assert {"train_loss", "train_perplexity", "val_loss", "val_perplexity", "val_CIDEr"} <= set(history[0])
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert list((trained_run / "checkpoints").glob("step-*.state.pt"))


def test_caption_prints_one_line_per_picture_and_reports_bad_files(trained_run, synth_dir, tmp_path, capsys):
    images = sorted((synth_dir / "images").glob("*.png"))[:3]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a picture")
    code = main(["caption", str(trained_run), str(images[0]), str(broken), str(images[1]), str(tmp_path / "nope.png")])
    out, err = capsys.readouterr()
    assert code == 1
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == [str(images[0]), str(images[1])]
    assert all(line.split("\t")[1].strip() for line in lines)
    assert f"{broken}: not an image" in err and "nope.png: file not found" in err
    assert "Traceback" not in err


def test_caption_json_and_folder(trained_run, synth_dir, capsys):
    assert main(["caption", str(trained_run), str(synth_dir / "images"), "--json", "--beam-size", "3", "--n-best", "2"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 80
    assert all(r["error"] is None and r["caption"] == r["hypotheses"][0]["caption"] for r in rows)
    assert all(len(r["hypotheses"]) == 2 and r["hypotheses"][0]["score"] >= r["hypotheses"][1]["score"] for r in rows)


@pytest.mark.parametrize("args, message", [
    (["train", "--data", "missing.json", "--out", "x", "--config", "synth"], "missing.json: annotation file not found"),
    (["train", "--data", "d.json", "--out", "x", "--set", "model.hiden_dim=3"], "unknown setting 'model.hiden_dim'"),
    (["train", "--data", "d.json", "--out", "x", "--set", "train.epochs=-1"], "train.epochs: -1 is below the minimum 1"),
    (["caption", "no-such-run", "a.png"], "no-such-run: run directory not found"),
    (["train", "--data", "d.json"], "--out: give a run directory"),
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
])
def test_user_mistakes_give_one_line_and_no_traceback(tmp_path, args, message):
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_training_into_an_existing_run_is_refused(trained_run, synth_dir, tiny_config_args, capsys):
    code = main(["train", "--data", str(synth_dir / "dataset.json"), "--out", str(trained_run), *tiny_config_args])
    assert code == 2
    assert "already holds a run; use --resume" in capsys.readouterr().err


def test_synth_and_export(tmp_path, trained_run, capsys):
    assert main(["synth", str(tmp_path / "s"), "--images", "12", "--size", "48"]) == 0
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 12
    assert main(["export", str(trained_run), str(tmp_path / "package")]) == 0
    assert sorted(p.name for p in (tmp_path / "package").iterdir()) == ["README.md", "config.json", "model.safetensors",
                                                                        "vocab.json"]   # README.md: the model card
    image = next((tmp_path / "s" / "images").glob("*.png"))
    capsys.readouterr()
    assert main(["caption", str(tmp_path / "package"), str(image)]) == 0
    assert capsys.readouterr().out.startswith(str(image))
    shutil.rmtree(tmp_path / "package")


def test_caption_sampling_gives_n_different_reproducible_captions(trained_run, synth_dir, capsys):
    image = str(sorted((synth_dir / "images").glob("*.png"))[0])
    args = ["caption", str(trained_run), image, "--json", "--sample", "--n-best", "6", "--temperature", "1.5", "--seed", "3"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert first == again
    hyps = first["hypotheses"]
    assert len(hyps) == 6 and len({h["caption"] for h in hyps}) > 1
    assert [h["logprob"] for h in hyps] == sorted((h["logprob"] for h in hyps), reverse=True)
