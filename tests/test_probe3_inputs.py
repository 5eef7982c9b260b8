"""Probe 3 (issue 29): inputs that were silently wrong, bombs that ran for minutes or read until
memory ran out, and values that ended in tracebacks. Each is refused in one line naming the file
or the setting, quickly and in little memory; training never keeps a non-finite model as best."""

from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import showtell
from showtell.cli import main
from showtell.config import config_from_dict, load_config
from showtell.errors import ArgumentError, ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SOURCE = Path(showtell.__file__).resolve().parents[1]   # the showtell under test (scripts/mutation_check.py's copy)


def _one_line(error: BaseException, *words: str) -> str:
    message = str(error)
    assert "\n" not in message and len(message) < 400, message[:1000]
    for word in words:
        assert word in message, message
    return message


def _cli_one_line(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    said = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("showtell:")]
    assert "Traceback" not in err and len(said) == 1 and err.rstrip().endswith(said[0]), err[-2000:]
    for word in words:
        assert word in said[0], err
    return said[0]


def _bounded_python(code: str, memory_mb: int, timeout: float = 120) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter whose address space may grow by at most `memory_mb` MB beyond
    what it holds after its imports (`GROW()` in the code sets the cap): a read that does not stop
    fails there with MemoryError instead of taking the machine's memory."""
    prelude = textwrap.dedent(f"""
        import resource
        def GROW():
            with open("/proc/self/status") as f:
                size = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
            cap = size + {memory_mb} * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
    """)
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(SOURCE)})


# --- silently wrong: non-finite word vectors, non-finite losses ---------------------------------------------------
@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "NaN"])
def test_glove_file_with_a_non_finite_number_is_refused_with_its_line(tmp_path, bad):
    from showtell.models.embeddings import read_word_vectors

    path = tmp_path / "glove.3d.txt"
    path.write_text("a 0.1 0.2 0.3\nred 0.5 {} 0.1\ncircle 1 2 3\n".format(bad))
    with pytest.raises(DataError) as caught:
        read_word_vectors(f"glove:{path}", ["<pad>", "<start>", "<end>", "<unk>", "a", "red", "circle"])
    _one_line(caught.value, str(path), "line 2", "not finite")


def test_word2vec_files_with_a_non_finite_number_are_refused(tmp_path):
    from showtell.models.embeddings import read_word_vectors

    words = ["<pad>", "<start>", "<end>", "<unk>", "a", "red"]
    text = tmp_path / "w2v.vec"
    text.write_text("2 3\na 0.1 0.2 0.3\nred 0.5 inf 0.1\n")
    with pytest.raises(DataError) as caught:
        read_word_vectors(f"word2vec:{text}", words)
    _one_line(caught.value, str(text), "line 3", "not finite")
    binary = tmp_path / "w2v.bin"
    binary.write_bytes(b"2 3\n" + b"a " + struct.pack("<3f", 0.1, 0.2, 0.3) + b"\n"
                       + b"red " + struct.pack("<3f", 0.5, float("nan"), 0.1) + b"\n")
    with pytest.raises(DataError) as caught:
        read_word_vectors(f"word2vec:{binary}", words)
    _one_line(caught.value, str(binary), "vector 2", "red", "not finite")


def test_a_non_finite_loss_stops_training_and_never_becomes_the_best_model(tmp_path, synth_dir, tiny_config_args,
                                                                         monkeypatch, capsys):
    """Epoch 1 trains normally; from epoch 2 the loss is NaN. Training stops with one line, exit 2,
    and the model file keeps epoch 1's finite weights (epoch 2 is never 'best')."""
    from safetensors.torch import load_file

    from showtell.training import phases

    original = phases.CrossEntropy.loss

    def poisoned(self, s, ids, batch, state):
        loss, value = original(self, s, ids, batch, state)
        if state.epoch >= 1:
            return loss * float("nan"), float("nan")
        return loss, value

    monkeypatch.setattr(phases.CrossEntropy, "loss", poisoned)
    out = tmp_path / "run"
    code = main(["--quiet", "train", "--data", str(synth_dir / "dataset.json"), "--out", str(out), *tiny_config_args])
    _cli_one_line(capsys, code, "loss", "not finite", "epoch 2")
    weights = load_file(out / "model.safetensors")
    assert all(bool(torch.isfinite(w).all()) for w in weights.values())
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines() if line.strip()]
    assert [r["epoch"] for r in history] == [1]


def test_a_nan_score_is_never_the_best():
    from showtell.training.epochs import choose_best
    from showtell.training.schedules import Plan
    from showtell.training.state import TrainState

    state = TrainState(Plan(total_steps=10))
    assert choose_best(state, ("val_CIDEr", 0.5))
    assert not choose_best(state, ("val_CIDEr", float("nan")))
    assert not choose_best(state, ("val_CIDEr", float("inf")))
    assert state.best_score == 0.5 and state.best_epoch == 0
    fresh = TrainState(Plan(total_steps=10))
    assert not choose_best(fresh, ("train_loss", float("nan"))) and fresh.best_epoch is None


# --- bombs: aliases, nesting, endless and sparse files ----------------------------------------------------------
def _laughs(levels: int) -> str:
    lines = ["model:", "  hidden_dim:", '    - &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    previous = "a"
    for name in "bcdefghijk"[:levels - 1]:
        lines.append(f"    - &{name} [" + ",".join([f"*{previous}"] * 9) + "]")
        previous = name
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(60)
def test_billion_laughs_config_is_refused_at_once(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(_laughs(8))          # 9**8 = 43 million strings once expanded; 0.4 kB as written
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert time.perf_counter() - started < 2
    _one_line(caught.value, str(path), "alias")


@pytest.mark.timeout(60)
def test_a_long_value_is_shown_shortened_in_the_message(tmp_path):
    """No aliases: 5,000 numbers where one is expected; the message shows the start of them."""
    path = tmp_path / "long.yaml"
    path.write_text("model:\n  hidden_dim: [" + ", ".join(["12345"] * 5000) + "]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    _one_line(caught.value, str(path), "model.hidden_dim", "expected int", "[12345, 12345")
    nested = config_from_dict
    with pytest.raises(ConfigError) as caught:
        nested({"model": {"encoder": [[[[[[[[["deep"]]]]]]]] * 1000]}}, "x.json")
    _one_line(caught.value, "x.json", "model.encoder")


def test_deeply_nested_yaml_config_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model:\n  hidden_dim: " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    _one_line(caught.value, str(path), "nested")


@pytest.mark.parametrize("name, text", [
    ("deep.json", '{"images": [' + "[" * 100000 + "]" * 100000 + "]}"),
    ("deep_top.json", "[" * 100000 + "]" * 100000),
    ("deep.jsonl", '{"image": "a.png", "caption": ' + "[" * 100000 + "]" * 100000 + "}\n"),
])
def test_deeply_nested_annotations_are_one_line(tmp_path, name, text):
    from showtell.data.formats import read_annotations

    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_annotations(str(path), tmp_path)
    _one_line(caught.value, str(path), "nested")


def test_a_runs_deeply_nested_config_json_is_one_line(tmp_path, trained_run, capsys, synth_dir):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "config.json").write_text('{"model": ' + "[" * 100000 + "]" * 100000 + "}")
    picture = sorted((synth_dir / "images").glob("*.png"))[0]
    code = main(["caption", str(run), str(picture)])
    _cli_one_line(capsys, code, str(run / "config.json"), "nested")


def test_the_bounded_reader_stops_a_pipe_at_its_limit(tmp_path):
    """A pipe (no size to stat) with 64 kB more than the limit: refused after reading limit+1 bytes;
    one of exactly the limit is read whole."""
    from showtell.fileio import read_bounded

    def pipe_of(size: int) -> Path:
        fifo = tmp_path / f"fifo{size}"
        os.mkfifo(fifo)

        def write():
            with open(fifo, "wb") as f:
                try:
                    f.write(b"x" * size)
                except BrokenPipeError:
                    pass

        threading.Thread(target=write, daemon=True).start()
        return fifo

    limit = 1 << 20
    with pytest.raises(DataError) as caught:
        read_bounded(pipe_of(limit + (64 << 10)), limit, "a test file", DataError)
    _one_line(caught.value, "fifo", "larger than", "a test file")
    assert read_bounded(pipe_of(limit), limit, "a test file", DataError) == b"x" * limit
    regular = tmp_path / "regular"
    regular.write_bytes(b"y" * (limit + 1))
    with pytest.raises(DataError):
        read_bounded(regular, limit, "a test file", DataError)


@pytest.mark.timeout(120)
def test_annotations_and_configs_from_dev_zero_and_sparse_files_are_refused_in_little_memory(tmp_path):
    """`--data /dev/zero` (endless: read up to the limit, here lowered to 4 MB) and 2 GB sparse files
    (refused by their size before a byte is read) in a process allowed 300 MB more than its imports."""
    sparse = tmp_path / "sparse.json"
    with open(sparse, "wb") as f:
        f.truncate(2 << 30)
    sparse_yaml = tmp_path / "sparse.yaml"
    with open(sparse_yaml, "wb") as f:
        f.truncate(2 << 30)
    done = _bounded_python(f"""
        from showtell import fileio
        from showtell.config import load_config
        from showtell.data.formats import read_annotations
        from showtell.errors import ShowtellError
        GROW()
        for call in (lambda: read_annotations({str(sparse)!r}, {str(tmp_path)!r}),
                     lambda: load_config({str(sparse_yaml)!r})):
            try:
                call()
            except ShowtellError as error:
                print("refused:", error)
        getattr(fileio, "FILE_LIMITS", dict())["annotations"] = 4 << 20
        try:
            read_annotations("/dev/zero", {str(tmp_path)!r})
        except ShowtellError as error:
            print("refused:", error)
    """, memory_mb=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert str(sparse) in lines[0] and "larger than" in lines[0]
    assert str(sparse_yaml) in lines[1] and "larger than" in lines[1]
    assert "/dev/zero" in lines[2] and "larger than" in lines[2]


@pytest.mark.timeout(300)
def test_caption_of_dev_zero_is_refused_in_little_memory(trained_run):
    """The picture /dev/zero (endless) and a 2 GB sparse picture: each one result with an error
    saying it is too large, in a process allowed 400 MB more than it holds after loading the model."""
    done = _bounded_python(f"""
        import os, tempfile
        from showtell import Captioner, fileio
        captioner = Captioner.load({str(trained_run)!r})
        sparse = os.path.join(tempfile.mkdtemp(), "sparse.png")
        with open(sparse, "wb") as f:
            f.truncate(2 << 30)
        getattr(fileio, "FILE_LIMITS", dict())["image"] = 8 << 20
        GROW()
        for result in captioner.caption(["/dev/zero", sparse]):
            print(result.source, "|", result.error)
    """, memory_mb=400)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 2 and all("too large" in line for line in lines), done.stdout


# --- tracebacks: word2vec headers, feature manifests, sizes, beams, temperatures -----------------------------------
@pytest.mark.parametrize("header", [b"-3 4", b"3 -4", b"three four", b"3 4 5", b"1 100000000"])
def test_bad_binary_word2vec_headers_are_one_line(tmp_path, header):
    from showtell.models.embeddings import read_word_vectors

    path = tmp_path / "w2v.bin"
    path.write_bytes(header + b"\na " + struct.pack("<4f", 1, 2, 3, 4) + b"\n")
    with pytest.raises(DataError) as caught:
        read_word_vectors(f"word2vec:{path}", ["<pad>", "<start>", "<end>", "<unk>", "a"])
    _one_line(caught.value, str(path), "header")


@pytest.mark.timeout(120)
def test_word_vectors_from_dev_zero_are_refused_in_little_memory(tmp_path):
    """No line break ever: the text reader's lines and the binary header and words are read bounded."""
    binary = tmp_path / "zero.bin"
    binary.symlink_to("/dev/zero")
    done = _bounded_python(f"""
        from showtell.errors import ShowtellError
        from showtell.models.embeddings import read_word_vectors
        GROW()
        for spec in ("glove:/dev/zero", "word2vec:/dev/zero", "word2vec:{binary}"):
            try:
                read_word_vectors(spec, ["a", "red"])
            except ShowtellError as error:
                print("refused:", error)
    """, memory_mb=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("refused:") and len(line) < 300 for line in lines), done.stdout
    assert "/dev/zero" in lines[0] and str(binary) in lines[2]


def test_feature_cache_manifest_without_records_is_one_line(tmp_path):
    from showtell.data.features import FORMAT, FeatureCache

    good = {"format": FORMAT, "encoder": {"encoder": "small", "encoder_weights": "none", "image_size": 32},
            "outputs": ["global"], "shapes": {"global": [1, 8]},
            "records": [{"key": "a", "path": "a.png", "split": "train", "captions": ["a b"], "tokens": [["a", "b"]]}]}
    (tmp_path / "complete.json").write_text("{}")
    for broken in ({k: v for k, v in good.items() if k != "records"}, {**good, "records": {"a": 1}},
                   {**good, "records": [{"key": "a"}]}, {**good, "outputs": None}, [1, 2]):
        (tmp_path / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(DataError) as caught:
            FeatureCache.open(tmp_path)
        _one_line(caught.value, str(tmp_path), "manifest")
    (tmp_path / "manifest.json").write_text(json.dumps(good))
    (tmp_path / "complete.json").write_text("[")
    with pytest.raises(DataError):
        FeatureCache.open(tmp_path)
    (tmp_path / "complete.json").write_text('{"bad": 3}')
    with pytest.raises(DataError):
        FeatureCache.open(tmp_path)


@pytest.mark.parametrize("setting", ["model.hidden_dim", "model.embed_dim", "model.attention_dim",
                                     "model.transformer_ff_dim"])
def test_model_sizes_have_an_upper_bound(setting):
    with pytest.raises(ConfigError) as caught:
        load_config("synth", [f"{setting}=1000000"])
    _one_line(caught.value, setting, "maximum")


def test_a_run_asking_for_a_huge_model_is_refused_before_allocation(tmp_path, trained_run, capsys, synth_dir):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"]["hidden_dim"] = 1000000
    (run / "config.json").write_text(json.dumps(config))
    picture = sorted((synth_dir / "images").glob("*.png"))[0]
    code = main(["caption", str(run), str(picture)])
    _cli_one_line(capsys, code, "config.json", "model.hidden_dim", "maximum")


@pytest.fixture(scope="module")
def captioner(trained_run):
    from showtell import Captioner

    return Captioner.load(trained_run)


def test_beam_size_and_n_best_have_one_upper_bound_everywhere(captioner, capsys, trained_run, synth_dir):
    from showtell.config import all_settings

    top = all_settings()["decode.beam_size"].metadata["max"]
    assert captioner.options(beam_size=top).beam_size == top
    for asked in ({"beam_size": 10 ** 9}, {"beam_size": top + 1},
                  {"n_best": 10 ** 9, "sampling": {"seed": 1}}):
        with pytest.raises(ArgumentError) as caught:
            captioner.options(**asked)
        _one_line(caught.value, "at most 100")
    picture = sorted((synth_dir / "images").glob("*.png"))[0]
    with pytest.raises(ArgumentError):
        captioner.caption(str(picture), beam_size=10 ** 9)
    code = main(["caption", str(trained_run), str(picture), "--beam-size", str(10 ** 9)])
    _cli_one_line(capsys, code, "--beam-size", "at most 100")


@pytest.mark.parametrize("temperature", [1e-300, float("inf"), float("nan"), 1e300, 0.0, -1.0])
def test_sampling_temperature_is_finite_and_bounded(captioner, temperature):
    with pytest.raises(ArgumentError) as caught:
        captioner.options(sampling={"temperature": temperature})
    _one_line(caught.value, "temperature")


def test_the_temperature_range_is_the_configs_and_its_ends_sample_finite(captioner, synth_dir, capsys, trained_run):
    from showtell.config import all_settings

    meta = all_settings()["decode.temperature"].metadata
    picture = sorted((synth_dir / "images").glob("*.png"))[0]
    for temperature in (meta["min"], meta["max"]):
        result = captioner.caption(str(picture), n_best=3, sampling={"temperature": temperature, "seed": 0})
        assert result.error is None
        assert all(math.isfinite(h.logprob) for h in result.hypotheses)
    code = main(["caption", str(trained_run), str(picture), "--sample", "--temperature", "1e-300"])
    _cli_one_line(capsys, code, "--temperature")


def test_a_deeply_nested_or_endless_vocabulary_is_one_line(tmp_path):
    from showtell.errors import RunError
    from showtell.vocab import Vocabulary

    deep = tmp_path / "vocab.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunError, match="vocab.json: nested too deeply"):
        Vocabulary.load(deep)
    with pytest.raises(RunError, match="larger than the .* limit for a vocabulary"):
        Vocabulary.load("/dev/zero")
