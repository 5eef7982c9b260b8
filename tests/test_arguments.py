"""Bad arguments to the CLI and the Python API: refused in one line (or one exception type), never
a traceback, never a silently different run; pictures of every kind the API documents."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from showtell import Captioner
from showtell.cli import main
from showtell.errors import ShowtellError


@pytest.fixture(scope="module")
def picture(synth_dir):
    return str(sorted((synth_dir / "images").glob("*.png"))[0])


@pytest.mark.parametrize("extra, message", [
    (["--batch-size", "0"], "--batch-size: expected 1 or more, got 0"),             # was a ValueError traceback
    (["--batch-size", "-1"], "--batch-size: expected 1 or more, got -1"),           # was exit 0, no output
    (["--sample", "--top-k", "-1"], "--top-k: expected 0 or more, got -1"),         # was a RuntimeError traceback
    (["--device", "tpu"], "--device: unknown device 'tpu'"),                        # was torch's RuntimeError
    (["--beam-size", "1", "--n-best", "3"], "--n-best 3: beam search keeps at most --beam-size alternatives"),
])
def test_caption_refuses_bad_arguments_in_one_line(trained_run, picture, tmp_path, extra, message):
    done = run_cli("caption", str(trained_run), picture, picture, *extra, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stdout == ""


@pytest.mark.parametrize("extra, message", [
    (["--max-images", "-1"], "--max-images: expected 1 or more, got -1"),          # scored 4 of 5 pictures
    (["--max-images", "0"], "--max-images: expected 1 or more, got 0"),
    (["--beam-size", "0"], "--beam-size: expected 1 or more, got 0"),              # quietly used beam 3
    (["--device", "tpu"], "--device: unknown device 'tpu'"),
])
def test_evaluate_refuses_bad_arguments(trained_run, synth_dir, tmp_path, extra, message):
    done = run_cli("evaluate", str(trained_run), "--data", str(synth_dir / "dataset.json"), *extra, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command, message", [
    (["train", "--data", "d.json", "--out", "x", "--max-minutes", "-1"], "--max-minutes: expected a positive number"),
    (["train", "--data", "d.json", "--out", "x", "--max-minutes", "0"], "--max-minutes: expected a positive number"),
    (["serve", "RUN", "--device", "tpu"], "--device: unknown device 'tpu'"),
    (["prepare", "--data", "d.json", "--out", "x", "--batch-size", "0"], "--batch-size: expected 1 or more"),
])
def test_other_commands_refuse_bad_arguments(trained_run, tmp_path, command, message):
    command = [str(trained_run) if c == "RUN" else c for c in command]
    done = run_cli(*command, cwd=tmp_path)
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_evaluate_max_images_takes_exactly_that_many(trained_run, synth_dir):
    from showtell.evaluation.evaluate import evaluate_run

    report = evaluate_run(trained_run, [str(synth_dir / "dataset.json")], None, "test", max_images=3,
                          write_html=False, show_progress=False, metrics=("Bleu_1",))
    assert report["scores"]["n_images"] == 3
    with pytest.raises(ShowtellError, match="max_images"):
        evaluate_run(trained_run, [str(synth_dir / "dataset.json")], None, "test", max_images=-1, write_html=False)
    with pytest.raises(ShowtellError, match="beam_size"):
        evaluate_run(trained_run, [str(synth_dir / "dataset.json")], None, "test", beam_size=0, write_html=False)


@pytest.mark.parametrize("kwargs, python_words, cli_words", [
    ({"device": "tpu"}, "device: unknown device 'tpu'", "--device: unknown device 'tpu'"),
    ({"max_images": 0}, "max_images: expected 1 or more", "--max-images: expected 1 or more"),
    ({"beam_size": 0}, "beam_size: expected 1 or more", "--beam-size: expected 1 or more"),
])
def test_evaluate_names_arguments_as_its_caller_spells_them(trained_run, synth_dir, kwargs, python_words, cli_words):
    """One spelling object (decoding/options.py) says how a caller names each argument: Python's
    keywords, the CLI's flags."""
    from showtell.decoding.options import CLI
    from showtell.evaluation.evaluate import evaluate_run

    data = [str(synth_dir / "dataset.json")]
    with pytest.raises(ShowtellError) as python:
        evaluate_run(trained_run, data, None, "test", write_html=False, **kwargs)
    with pytest.raises(ShowtellError) as cli:
        evaluate_run(trained_run, data, None, "test", write_html=False, spelling=CLI, **kwargs)
    assert str(python.value).startswith(python_words) and str(cli.value).startswith(cli_words)


@pytest.fixture(scope="module")
def captioner(trained_run):
    return Captioner.load(trained_run)


@pytest.mark.parametrize("kwargs, words", [
    ({"beam_size": -1}, "beam_size: expected 1 or more"),
    ({"beam_size": 2.5}, "beam_size: expected a whole number"),
    ({"beam_size": True}, "beam_size: expected a whole number"),
    ({"n_best": 0}, "n_best: expected 1 or more"),
    ({"beam_size": 3, "n_best": 5}, "n_best: beam search keeps at most beam_size alternatives (5 > 3)"),
    ({"batch_size": 0}, "batch_size: expected 1 or more"),
    ({"sampling": {"top_k": -1}}, "top_k: expected 0 or more"),
    ({"sampling": {"temperature": 0}}, "temperature: expected a number from 0.001 to 100"),
    ({"sampling": {"top_p": 1.5}}, "top_p: expected a number in (0, 1]"),
    ({"sampling": {"tempreature": 1.0}}, "sampling: unknown option 'tempreature'"),
    ({"return_attention": True}, "return_attention: not an attention model"),
])
def test_api_bad_arguments_raise_one_documented_exception(captioner, picture, kwargs, words):
    from showtell.errors import ArgumentError

    with pytest.raises(ArgumentError) as caught:
        captioner.caption(picture, **kwargs)
    assert words in str(caught.value)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ShowtellError)


@pytest.mark.parametrize("paths, device, words", [
    ([], "cpu", "Captioner.load: expected a run directory"),
    (None, "cpu", "Captioner.load: expected a run directory"),
    ("RUN", "tpu", "device: unknown device 'tpu'"),
])
def test_api_load_refuses_bad_arguments(trained_run, paths, device, words):
    from showtell.errors import ArgumentError

    with pytest.raises(ArgumentError, match=words.replace("(", r"\(")):
        Captioner.load(str(trained_run) if paths == "RUN" else paths, device=device)


def test_api_reads_every_documented_kind_of_picture(captioner, picture):
    expected = captioner.caption(picture).caption
    data = open(picture, "rb").read()
    array = np.asarray(Image.open(picture).convert("RGB"))
    kinds = [data, bytearray(data), memoryview(data), io.BytesIO(data), open(picture, "rb"), array,
             array.astype(np.float32) / 255.0, Image.open(picture)]
    results = captioner.caption(kinds)
    assert [r.error for r in results] == [None] * len(kinds)
    assert [r.caption for r in results] == [expected] * len(kinds)
    one = captioner.caption(io.BytesIO(data))  # one file object is one picture, not an iterable of lines
    assert one.error is None and one.caption == expected
    assert captioner.caption(np.asarray(array)).caption == expected


def test_api_bad_pictures_give_result_errors(captioner, picture):
    results = captioner.caption([None, 42, np.zeros((2, 2, 7), np.uint8), io.StringIO("text"), picture])
    assert [r.error is not None for r in results] == [True, True, True, True, False]
    assert "cannot read a picture from NoneType" in results[0].error
    assert "array of shape (2, 2, 7) is not a picture" in results[2].error
    assert "text mode" in results[3].error
    assert results[4].caption
    assert captioner.caption(None).error is not None


def test_caption_output_keeps_one_line_per_picture_for_odd_names(trained_run, picture, tmp_path, capsys):
    odd = [tmp_path / "tab\there.png", tmp_path / "new\nline.png", tmp_path / 'quote".png']
    for path in odd:
        path.write_bytes(open(picture, "rb").read())
    missing = tmp_path / "gone\nfile.png"
    code = main(["caption", str(trained_run), *map(str, odd), str(missing)])
    out, err = capsys.readouterr()
    assert code == 1
    rows = [line.split("\t") for line in out.splitlines()]  # names are JSON strings when they need quoting
    assert len(rows) == 3 and all(len(row) == 2 and row[1] for row in rows)
    assert [json.loads(row[0]) if row[0].startswith('"') else row[0] for row in rows] == [str(p) for p in odd]
    messages = [line[line.index("showtell:"):] for line in err.splitlines() if "showtell:" in line]
    assert len(messages) == 2, err  # one line for the missing picture, one summary line
    assert messages[0] == "showtell: error: " + json.dumps(str(missing)) + ": file not found"


def test_attention_checks_come_before_any_caption(trained_run, picture, tmp_path, capsys):
    # not an attention model: refused before a caption is printed
    assert main(["caption", str(trained_run), picture, "--attention", str(tmp_path / "maps")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not an attention model" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["caption", str(trained_run), picture, "--attention", str(blocker)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "exists and is not a folder" in err


def test_attention_maps_of_same_named_pictures_do_not_overwrite(attention_run, picture, tmp_path, capsys):
    pictures = []
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        pictures.append(tmp_path / folder / "one.png")
        pictures[-1].write_bytes(open(picture, "rb").read())
    out_dir = tmp_path / "maps"
    assert main(["caption", str(attention_run), *map(str, pictures), "--attention", str(out_dir)]) == 0
    assert sorted(p.name for p in out_dir.iterdir()) == ["one-2.png", "one.png"]


def test_caption_n_best_within_the_beam_gives_that_many(trained_run, picture, capsys):
    # --n-best with --sample draws that many captions; with search it is bounded by the beam
    assert main(["caption", str(trained_run), picture, "--json", "--beam-size", "3", "--n-best", "3"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert len(row["hypotheses"]) == 3


def test_exit_statuses_are_those_the_readme_gives(trained_run, picture, tmp_path):
    from conftest import ROOT

    readme = (ROOT / "docs" / "reliability.md").read_text()
    section = readme[readme.index("# When things go wrong"):]
    section = " ".join(section.split())
    assert ("2 when something you gave is wrong (an argument, a setting, an annotation file or its content, "
            "a run folder, a port in use); 1 when pictures could not be captioned") in section
    malformed = tmp_path / "captions.json"
    malformed.write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    cases = [(["train", "--data", str(malformed), "--out", str(tmp_path / "r"), "--config", "synth"], 2),  # content
             (["caption", str(trained_run), picture, "--batch-size", "0"], 2),                           # argument
             (["caption", str(tmp_path / "nothing"), picture], 2),                                       # run folder
             (["caption", str(trained_run), str(tmp_path / "missing.png")], 1)]                          # picture
    for args, status in cases:
        done = run_cli(*args, cwd=tmp_path)
        assert done.returncode == status, (args, done.stderr)
        assert "Traceback" not in done.stderr
