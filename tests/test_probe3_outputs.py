"""Issue 29, probe 3: outputs that replace files not ours, outputs that carry a stranger's bytes,
and the service on IPv6.

Never aimed at the machine's own device files: a replaced /dev/null (as root) would break the
machine. The devices here are a FIFO, a device node made in a temporary folder (or, where that is
not permitted, a symlink to /dev/null, which a wrong rename replaces harmlessly: the link, not the device).
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from showtell import fileio
from showtell.errors import ShowtellError


def _reader(fifo: Path) -> tuple[threading.Thread, list[bytes]]:
    """A thread that reads `fifo` to its end (as `cat fifo` would); daemon, so a writer that never
    comes leaves it blocked without holding up the test run."""
    got: list[bytes] = []

    def read():
        with open(fifo, "rb") as f:
            got.append(f.read())

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread, got


def _own_run(trained_run: Path, tmp_path: Path) -> Path:
    """A copy of the session's run, for tests that let evaluate write into it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns(".lock*"))
    return run


# --- files replaced that are not ours ------------------------------------------------------------------
def test_atomic_write_into_a_fifo_reaches_its_reader(tmp_path):
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    thread, got = _reader(fifo)
    fileio.atomic_write_text(fifo, "hello\n")
    thread.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
    assert got == [b"hello\n"]
    assert os.listdir(tmp_path) == ["out.fifo"]      # no temporary file left


def test_atomic_write_through_a_symlink_to_a_fifo_keeps_both(tmp_path):
    fifo, link = tmp_path / "pipe", tmp_path / "link"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    thread, got = _reader(fifo)
    fileio.write_json(link, [1])
    thread.join(10)
    assert link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert got and json.loads(got[0]) == [1]


def test_atomic_write_into_a_character_device_writes_into_it(tmp_path):
    """A device node (as /dev/full, /dev/null, a tty) is written into, never renamed over."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))    # this machine's /dev/null, copied here
    except (PermissionError, OSError):
        node.symlink_to("/dev/null")   # the rename would replace the link only: harmless, and seen
    try:
        fileio.atomic_write_text(node, "discarded\n")
    except OSError:
        pass                           # a node the container forbids opening: refused, which is fine
    assert stat.S_ISCHR(os.stat(node).st_mode), "the device was replaced by a regular file"
    assert not node.is_symlink() or os.readlink(node) == "/dev/null"
    assert os.listdir(tmp_path) == ["null"]


def test_atomic_write_through_a_symlink_to_dev_null_keeps_the_link(tmp_path):
    link = tmp_path / "stdout"
    link.symlink_to("/dev/null")                 # as /dev/stdout is a link to the terminal or pipe
    fileio.atomic_write_text(link, "x" * 100)
    assert link.is_symlink() and os.readlink(link) == "/dev/null"


def test_atomic_write_refuses_a_socket_in_one_line(tmp_path):
    path = tmp_path / "s.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    try:
        with pytest.raises(ShowtellError, match="s.sock: .*socket") as caught:
            fileio.atomic_write_text(path, "x")
        assert "\n" not in str(caught.value)
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        server.close()


def test_atomic_write_still_replaces_a_regular_file_atomically(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    inode = os.stat(path).st_ino
    fileio.atomic_write_text(path, "new")
    assert path.read_text() == "new" and os.stat(path).st_ino != inode    # renamed over, not written into


def test_evaluate_results_into_a_fifo_reaches_its_reader(trained_run, synth_dir, tmp_path):
    from showtell.cli import main

    run, fifo = _own_run(trained_run, tmp_path), tmp_path / "results.fifo"
    os.mkfifo(fifo)
    thread, got = _reader(fifo)
    assert main(["--quiet", "evaluate", str(run), "--data", str(synth_dir / "dataset.json"), "--max-images", "3",
                 "--results", str(fifo)]) == 0
    thread.join(10)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
    assert got and len(json.loads(got[0])) == 3


@pytest.mark.parametrize("target", ["model.safetensors", "config.json", "history.jsonl", "README.md",
                                    "evaluations/test-greedy.json", "link-to-model", "hard-link-to-model"])
def test_evaluate_refuses_results_over_the_runs_own_files(trained_run, synth_dir, tmp_path, capsys, target):
    from showtell.cli import main

    run = _own_run(trained_run, tmp_path)
    (tmp_path / "link-to-model").symlink_to(run / "model.safetensors")
    os.link(run / "model.safetensors", tmp_path / "hard-link-to-model")
    (run / "evaluations").mkdir(exist_ok=True)
    path = tmp_path / target if "link" in target else run / target
    before = (run / "model.safetensors").read_bytes()
    capsys.readouterr()
    code = main(["--quiet", "evaluate", str(run), "--data", str(synth_dir / "dataset.json"), "--max-images", "2",
                 "--results", str(path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "--results" in err and "the run's own" in err, err
    assert (run / "model.safetensors").read_bytes() == before


def test_caption_refuses_coco_results_over_the_runs_own_files(trained_run, synth_dir, tmp_path, capsys):
    from showtell.cli import main

    run = _own_run(trained_run, tmp_path)
    before = (run / "config.json").read_bytes()
    picture = str(synth_dir / "images" / "000000.png")
    assert main(["--quiet", "caption", str(run), picture, "--coco-results", str(run / "config.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--coco-results" in err and "the run's own" in err, err
    assert (run / "config.json").read_bytes() == before


# --- outputs that carry a stranger's bytes --------------------------------------------------------------
HOSTILE_FILE = "<script>alert(1)</script>|x.png"
HOSTILE_CAPTION = "a | b <img src=x onerror=alert(1)> & c"
HOSTILE_REFERENCE = "two\nlines | <b>bold</b>"


def test_model_card_escapes_html_and_table_breakers(tmp_path):
    from showtell.reporting.modelcard import build_card

    run = tmp_path / "run"
    (run / "evaluations").mkdir(parents=True)
    (run / "data.json").write_text(json.dumps({"data": ["<script>x</script>.json"], "images": "<img src=y>"}))
    evaluation = {"split": "te|st<i>", "beam_size": 1, "models": [str(run)], "date": "2024",
                  "scores": {"CIDEr": 0.5, "n_images": 1}, "human": {"CIDEr": 1.0},
                  "predictions": [{"image_id": 1, "file": HOSTILE_FILE, "caption": HOSTILE_CAPTION,
                                   "references": [HOSTILE_REFERENCE]}]}
    (run / "evaluations" / "test-greedy.json").write_text(json.dumps(evaluation))
    card = build_card(run)
    body = card.split("\n---\n", 1)[1]           # the YAML block is data, quoted by yaml itself
    for raw in ("<script", "<img", "<b>", "<i>"):
        assert raw not in body, raw
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body and "&amp; c" in body
    rows = [line for line in body.splitlines() if line.startswith("| ") and "alert" in line]
    assert len(rows) == 1, rows                  # the reference's line break did not split the row
    row = rows[0].replace("\\|", "")
    assert row.count("|") == 4, rows[0]          # three cells: the escaped | do not add columns
    score_rows = [line for line in body.splitlines() if "CIDEr" in line and line.startswith("| ")]
    assert score_rows and all(line.replace("\\|", "").count("|") == 8 for line in score_rows), score_rows


def test_model_card_shows_markdown_marks_as_text(tmp_path):
    """A picture named like a Markdown image must not make the hub fetch it, and a backtick in a
    weights path must not end the code span around it."""
    from showtell.reporting.modelcard import build_card

    run = tmp_path / "run"
    (run / "evaluations").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"model": {"encoder": "small", "encoder_weights": "w`<b>x</b>.st"}}))
    evaluation = {"split": "test", "beam_size": 1, "models": [str(run)], "date": "2024",
                  "scores": {"CIDEr": 0.5, "n_images": 1}, "human": {"CIDEr": 1.0},
                  "predictions": [{"image_id": 1, "file": "![x](http://127.0.0.1:9/a.png)",
                                   "caption": "[click](http://127.0.0.1:9)", "references": ["`a` *b*"]}]}
    (run / "evaluations" / "test-greedy.json").write_text(json.dumps(evaluation))
    body = build_card(run).split("\n---\n", 1)[1]
    assert "](http" not in body.replace("\\](http", ""), body     # every ] before a link target is escaped
    assert "\\!\\[x\\](http://127.0.0.1:9/a.png)" in body and "\\`a\\` \\*b\\*" in body
    assert "w\\`&lt;b&gt;x&lt;/b&gt;.st" in body and "<b>" not in body


FORMULA_NAMES = ["=1+2.png", "+3.png", "-4.png", "@SUM(A1).png"]


def test_caption_csv_cells_never_start_a_formula(trained_run, synth_dir, tmp_path, monkeypatch, capsys):
    from showtell.cli import main

    for name in FORMULA_NAMES:
        shutil.copy(synth_dir / "images" / "000000.png", tmp_path / name)
    (tmp_path / "=5.png").write_bytes(b"not a picture")        # an error row names it too
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    main(["--quiet", "caption", str(trained_run), ".", "--csv"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == len(FORMULA_NAMES) + 1
    assert sorted(r["image"] for r in rows) == sorted("'" + n for n in [*FORMULA_NAMES, "=5.png"])
    for row in rows:
        for key in ("image", "caption", "error"):
            assert not row[key].startswith(("=", "+", "-", "@", "\t", "\r")), row
        if row["logprob"]:
            assert float(row["logprob"]) <= 0           # our own numbers stay numbers
    error = next(r for r in rows if r["error"])
    assert error["error"].startswith("'=5.png: ")


def test_evaluate_skipped_warning_escapes_control_bytes(trained_run, synth_dir, tmp_path, capsys):
    from showtell.cli import main

    data = json.loads((synth_dir / "dataset.json").read_text())
    (tmp_path / "images").mkdir()
    bad = "bad\x1b[2J\x07.png"
    test_images = [image for image in data["images"] if image["split"] == "test"][:3]
    for image in test_images[1:]:
        shutil.copy(synth_dir / "images" / image["filename"], tmp_path / "images" / image["filename"])
    test_images[0]["filename"] = bad
    (tmp_path / "images" / bad).write_bytes(b"not a picture")
    (tmp_path / "dataset.json").write_text(json.dumps({**data, "images": test_images}))
    run = _own_run(trained_run, tmp_path)
    capsys.readouterr()
    assert main(["--quiet", "evaluate", str(run), "--data", str(tmp_path / "dataset.json")]) == 0
    err = capsys.readouterr().err
    skipped = [part for part in err.split("showtell: warning: ")[1:] if part.startswith("skipped ")]
    assert len(skipped) == 1, err
    assert "\x1b" not in skipped[0] and "\x07" not in skipped[0]
    assert "\\u001b[2J\\u0007.png" in skipped[0], skipped[0]   # shown as `caption` shows it


# --- the service on IPv6 --------------------------------------------------------------------------------
def _ipv6_loopback_port() -> int | None:
    if not socket.has_ipv6:
        return None
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
            return s.getsockname()[1]
    except OSError:
        return None


def test_serve_on_ipv6_loopback_answers_standard_clients(trained_run, tmp_path):
    import httpx

    port = _ipv6_loopback_port()
    if port is None:
        pytest.skip("no IPv6 loopback on this machine")
    process = subprocess.Popen([sys.executable, "-m", "showtell", "serve", str(trained_run), "--host", "::1",
                                "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    url = f"http://[::1]:{port}"
    try:
        deadline, response = time.monotonic() + 120, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = httpx.get(url + "/healthz", timeout=2)      # Host: [::1]:PORT, as every client sends it
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert response is not None, "server did not start"
        assert response.status_code == 200, response.text
        assert httpx.get(url + "/", timeout=5).status_code == 200
        for host in (f"[::1]:{port}", "[::1]", "localhost", f"127.0.0.1:{port}"):
            assert httpx.get(url + "/healthz", headers={"Host": host}, timeout=5).status_code == 200, host
        for host in ("evil.example", "[::2]", "::1", "[::1", "[::1]x"):
            assert httpx.get(url + "/healthz", headers={"Host": host}, timeout=5).status_code == 400, host
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def test_atomic_write_replaces_a_link_to_a_file_never_the_file_it_names(tmp_path):
    """A run fetched into a hub cache has links into shared blobs: rewriting the card must not
    change the blob, and must stay atomic (the rename replaces the link)."""
    blob = tmp_path / "blobs" / "abc"
    blob.parent.mkdir()
    blob.write_text("shared")
    link = tmp_path / "README.md"
    link.symlink_to(blob)
    fileio.atomic_write_text(link, "new card")
    assert blob.read_text() == "shared"
    assert not link.is_symlink() and link.read_text() == "new card"
