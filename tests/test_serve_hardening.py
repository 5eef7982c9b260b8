"""The service under abuse: slow clients, malformed bodies, bounded load, and fuzzing from its OpenAPI schema."""

from __future__ import annotations

import selectors
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import Server


@pytest.fixture(scope="module")
def server(trained_run):
    s = Server(trained_run, "--body-timeout", "2", "--max-images", "4", "--max-upload-mb", "1")
    yield s
    assert "Traceback" not in s.stop()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_slow_upload_gets_408(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                  b"Content-Length: 5000\r\n\r\n--zz\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\n")
        started = time.monotonic()
        answer = b""
        try:
            while time.monotonic() - started < 15 and b"\r\n\r\n" not in answer:
                s.sendall(b"x")  # a byte now and then: a slow client
                s.settimeout(0.5)
                try:
                    answer += s.recv(4096)
                except socket.timeout:
                    pass
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("body, content_type", [
    (b"--zz\r\nContent-Disposition: form-data; name=\"images\"; filename=\"a.png\"\r\n\r\nabc", "multipart/form-data; boundary=zz"),
    (b"garbage without any boundary", "multipart/form-data; boundary=zz"),
    (b"--zz--\r\n", "multipart/form-data"),
    (b"", "multipart/form-data; boundary=zz"),
])
def test_malformed_multipart_is_4xx(server, body, content_type):
    response = httpx.post(server.url + "/v1/captions", content=body, headers={"content-type": content_type}, timeout=30)
    assert 400 <= response.status_code < 500, response.text


def test_bounded_load_has_no_server_errors_and_flat_memory(server, synth_dir):
    pictures = [p.read_bytes() for p in sorted((synth_dir / "images").glob("*.png"))[:10]]
    requests = []
    for i in range(240):
        kind = i % 4
        if kind == 3:
            requests.append([("images", ("bad.png", b"not a picture", "image/png"))])
        else:
            requests.append([("images", (f"{j}.png", pictures[(i + j) % 10], "image/png")) for j in range(kind + 1)])

    def send(files):
        try:
            return httpx.post(server.url + "/v1/captions", files=files, timeout=60).status_code
        except httpx.HTTPError as error:
            return type(error).__name__

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(send, requests[:40]))  # warm up allocator and caches
    before = rss_kb(server.process.pid)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, requests))
    after = rss_kb(server.process.pid)
    assert all(isinstance(c, int) and c < 500 for c in codes), [c for c in codes if not isinstance(c, int) or c >= 500]
    assert codes.count(200) == 180 and codes.count(415) == 60
    assert after - before < 60_000, f"memory grew from {before} to {after} kB"


def test_fuzzing_from_the_openapi_schema_finds_no_server_error(server):
    cli = shutil.which("schemathesis") or shutil.which("st")
    if cli is None:
        candidate = Path(sys.executable).parent / "schemathesis"
        cli = str(candidate) if candidate.exists() else None
    if cli is None:
        pytest.skip("schemathesis is not installed")
    done = subprocess.run([cli, "run", server.url + "/openapi.json", "--checks", "not_a_server_error",
                           "--max-examples", "30", "--seed", "1", "--request-timeout", "30", "--no-color"],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


@pytest.mark.timeout(240)
def test_silent_connections_neither_block_others_nor_stay_open(trained_run):
    """300 clients that send a request line and one header and then go quiet: other requests still
    get answers, and the server closes every quiet one after --header-timeout (3 s). A close counts
    only when the server does it (end of stream or a reset) within a bound, never a client's own
    timeout, so a deadline that never fires fails here in seconds."""
    s = Server(trained_run, "--header-timeout", "3")
    quiet = []
    try:
        first_opened = time.monotonic()
        for _ in range(300):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            quiet.append(c)
        opened = time.monotonic()
        assert httpx.get(s.url + "/healthz", timeout=10).status_code == 200
        for c in quiet:
            c.setblocking(False)
        waiting = {c.fileno(): c for c in quiet}
        closed, first_close = 0, None
        deadline = opened + 3 + 15          # the deadline plus a generous margin for a loaded machine
        with selectors.DefaultSelector() as selector:
            for c in quiet:
                selector.register(c, selectors.EVENT_READ)
            while waiting and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
                    try:
                        data = key.fileobj.recv(4096)
                    except ConnectionResetError:
                        data = b""
                    if data == b"":             # the server closed it (an answer before the close is fine)
                        selector.unregister(key.fileobj)
                        del waiting[key.fd]
                        closed += 1
                        first_close = first_close or time.monotonic()
        assert closed == len(quiet), (f"only {closed} of {len(quiet)} quiet connections were closed by the server "
                                      f"within {deadline - opened:.0f} s")
        assert first_close - first_opened >= 2.5, "a quiet connection was closed before its 3 s were up"
        assert httpx.get(s.url + "/healthz", timeout=10).status_code == 200
    finally:
        for c in quiet:
            c.close()
        assert "Traceback" not in s.stop()
