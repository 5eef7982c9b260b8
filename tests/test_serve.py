"""The HTTP service on a real loopback port: endpoints, limits, error codes, micro-batching."""

from __future__ import annotations

import io
import socket
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import Server
from PIL import Image

from showtell import Captioner


@pytest.fixture(scope="module")
def server(trained_run):
    s = Server(trained_run, "--max-upload-mb", "0.5", "--max-images", "4", "--max-pixels", "1000000",
               "--max-wait-ms", "60")
    yield s
    err = s.stop()
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def pictures(synth_dir):
    return sorted((synth_dir / "images").glob("*.png"))[:8]


def post(server, files, params=None, **kwargs):
    return httpx.post(server.url + "/v1/captions", files=files, params=params or {}, timeout=60, **kwargs)


def upload(path):
    return ("images", (path.name, path.read_bytes(), "image/png"))


def png_bytes(width, height, colour=(200, 10, 10)):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_page_and_openapi(server):
    health = httpx.get(server.url + "/healthz").json()
    assert health["status"] == "ok" and health["model"]["encoder"] == "small_narrow"   # the synth preset's NIC CNN
    assert health["limits"]["max_images"] == 4
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "http://" not in page.text and "https://" not in page.text  # no external assets
    schema = httpx.get(server.url + "/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert httpx.get(server.url + "/docs").status_code == 200


def test_captions_equal_the_python_api(server, trained_run, pictures):
    response = post(server, [upload(p) for p in pictures[:3]], {"beam_size": 3, "n_best": 2})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = Captioner.load(trained_run).caption([str(p) for p in pictures[:3]], beam_size=3, n_best=2)
    assert [r["filename"] for r in results] == [p.name for p in pictures[:3]]
    for got, want in zip(results, expected):
        assert got["caption"] == want.caption
        assert [h["caption"] for h in got["hypotheses"]] == [h.caption for h in want.hypotheses]
        assert got["logprob"] == pytest.approx(want.logprob, abs=1e-4)
        assert got["attention"] is None


@pytest.mark.parametrize("make, status, words", [
    (lambda: [("images", ("notes.png", b"hello, not a picture", "image/png"))], 415, "not an image"),
    (lambda: [("images", ("cut.png", png_bytes(64, 64)[:60], "image/png"))], 422, "cut.png"),
    (lambda: [("images", ("empty.jpg", b"", "image/jpeg"))], 422, "empty file"),
    (lambda: [("other", ("a.png", png_bytes(8, 8), "image/png"))], 422, "no pictures"),
    (lambda: [("images", (f"{i}.png", png_bytes(8, 8), "image/png")) for i in range(5)], 413, "too many pictures"),
    (lambda: [("images", ("big.bmp", b"BM" + bytes(600_000), "image/bmp"))], 413, "file too large"),
    (lambda: [("images", ("wide.png", png_bytes(4000, 300), "image/png"))], 413, "too many pixels"),
])
def test_bad_uploads_get_clear_4xx(server, make, status, words):
    response = post(server, make())
    assert response.status_code == status, response.text
    assert words in response.json()["detail"]


def test_decompression_bomb_is_refused_before_decoding(server):
    # a valid PNG header claiming 30000 x 30000 pixels, a few hundred bytes long
    raw = b"\x00" + b"\x00" * 30000
    body = zlib.compress(raw * 4)
    def chunk(kind, data):
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", (30000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])) + \
        chunk(b"IDAT", body) + chunk(b"IEND", b"")
    response = post(server, [("images", ("bomb.png", png, "image/png"))])
    assert response.status_code == 413 and "decompression bomb" in response.json()["detail"]


@pytest.mark.parametrize("params", [{"beam_size": 0}, {"beam_size": 999}, {"n_best": 0}, {"beam_size": "x"}])
def test_bad_parameters_are_422(server, pictures, params):
    assert post(server, [upload(pictures[0])], params).status_code == 422


def test_wrong_content_type_and_oversized_request(server):
    assert httpx.post(server.url + "/v1/captions", json={"url": "http://example.com/a.jpg"}).status_code == 415
    # A declared length over the limit is refused before the body is read (httpx will not send a
    # short body, so this one goes over a plain socket).
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as s:
        s.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
                  b"Content-Length: 1000000000\r\n\r\n" + b"x" * 100)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_concurrent_requests_are_batched_and_answered_correctly(server, trained_run, pictures):
    expected = {p.name: r.caption for p, r in zip(pictures, Captioner.load(trained_run).caption([str(p) for p in pictures]))}
    before = httpx.get(server.url + "/healthz").json()["batching"]
    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(lambda p: post(server, [upload(p)]), pictures * 3))
    assert all(r.status_code == 200 for r in responses)
    for picture, response in zip(pictures * 3, responses):
        assert response.json()["results"][0]["caption"] == expected[picture.name]
    after = httpx.get(server.url + "/healthz").json()["batching"]
    assert after["requests"] - before["requests"] == 24
    assert after["largest_batch"] > 1, after
    assert after["batches"] - before["batches"] < 24  # fewer forward passes than requests


def test_attention_model_returns_per_word_maps(attention_run, synth_dir):
    s = Server(attention_run)
    try:
        picture = sorted((synth_dir / "images").glob("*.png"))[0]
        assert httpx.get(s.url + "/healthz").json()["model"]["attention"] is True
        result = post(s, [upload(picture)], {"attention": "true", "beam_size": 2}).json()["results"][0]
        words = result["caption"].split()
        assert len(result["attention"]) == len(words) and result["grid_size"] == 2
        assert all(abs(sum(row) - 1) < 1e-4 and len(row) == 4 for row in result["attention"])
    finally:
        s.stop()


@pytest.mark.parametrize("count", [5, 50])
def test_too_many_pictures_is_one_413_whatever_the_count(server, count):
    response = post(server, [("images", (f"{i}.png", png_bytes(8, 8), "image/png")) for i in range(count)])
    assert response.status_code == 413, response.text  # 50 was a 422 with the multipart parser's words
    assert response.json()["detail"] == "too many pictures (more than 4 per request)"


def test_each_picture_gets_its_own_result_and_status(server, pictures):
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="8"/></svg>'
    files = [upload(pictures[0]), ("images", ("cut.png", png_bytes(64, 64)[:60], "image/png")),
             ("images", ("drawing.svg", svg, "image/svg+xml")), ("images", ("big.bmp", b"BM" + bytes(600_000), "image/bmp"))]
    response = post(server, files)
    assert response.status_code == 200, response.text  # was a 422 for the whole request, the good caption lost
    results = response.json()["results"]
    assert [r["filename"] for r in results] == [pictures[0].name, "cut.png", "drawing.svg", "big.bmp"]
    assert [r["status"] for r in results] == [200, 422, 415, 413]
    assert results[0]["error"] is None and results[0]["caption"]
    assert "cut.png" in results[1]["error"] and "not an image" in results[2]["error"]
    assert "file too large" in results[3]["error"]
    assert all(r["caption"] == "" and r["hypotheses"] == [] for r in results[1:])
    # nothing captioned: the first picture's status, its message, and every picture's result
    response = post(server, files[1:])
    assert response.status_code == 422 and "cut.png" in response.json()["detail"]
    assert [r["status"] for r in response.json()["results"]] == [422, 415, 413]


@pytest.mark.parametrize("params, words", [({"beam_size": 3, "n_best": 5}, "n_best: beam search keeps at most"),
                                           ({"attention": "true"}, "attention: not an attention model")])
def test_options_the_model_cannot_honour_are_refused(server, pictures, params, words):
    response = post(server, [upload(pictures[0])], params)
    assert response.status_code == 422 and words in response.json()["detail"]


def test_foreign_host_header_is_refused(server):
    assert httpx.get(server.url + "/healthz", headers={"Host": "evil.example"}).status_code == 400
    assert httpx.get(server.url + "/healthz", headers={"Host": f"localhost:{server.port}"}).status_code == 200


def test_docs_load_nothing_from_elsewhere(server):
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    import re

    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert not [a for a in assets if "//" in a], assets  # was swagger-ui from cdn.jsdelivr.net
    for asset in assets:
        assert httpx.get(server.url + "/" + asset.lstrip("/")).status_code == 200, asset
    assert "fetch(\"openapi.json\")" in page.text


def test_healthz_reports_the_decoding_budget(server):
    decoding = httpx.get(server.url + "/healthz").json()["decoding"]
    assert decoding["max_pixels"] == 1_000_000 and decoding["pixels_in_use"] == 0


def memory_mb(pid: int) -> dict:
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM")}


def test_decoded_pixels_stay_within_the_budget_under_concurrent_large_uploads(trained_run):
    big = png_bytes(3000, 3000)   # 9 M pixels each: 36 MB decoded
    s = Server(trained_run, "--max-images", "4", "--max-pixels", "10000000", "--max-decoded-pixels", "10000000")
    try:
        before = memory_mb(s.process.pid)
        files = [("images", (f"{i}.png", big, "image/png")) for i in range(4)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            responses = list(pool.map(lambda _: post(s, files), range(4)))
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        decoding = httpx.get(s.url + "/healthz").json()["decoding"]
        assert decoding["max_pixels"] == 10_000_000
        assert decoding["peak_pixels"] == 9_000_000, decoding   # one picture at a time
        assert decoding["pixels_in_use"] == 0 and decoding["waiting"] == 0
        after = memory_mb(s.process.pid)
        assert after["VmHWM"] - before["VmRSS"] < 200, (before, after)   # four at once: about 4 x 72 MB
        assert after["VmRSS"] - before["VmRSS"] < 60, (before, after)    # the memory went back
    finally:
        assert "Traceback" not in s.stop()


def test_decode_budget_never_holds_more_than_its_pixels():
    import threading
    import time

    from showtell.data.images import DecodeBudget

    budget, held, worst = DecodeBudget(10), [0], [0]
    lock = threading.Lock()

    def work(pixels):
        with budget.hold(pixels):
            with lock:
                held[0] += pixels
                worst[0] = max(worst[0], held[0])
            time.sleep(0.01)
            with lock:
                held[0] -= pixels

    threads = [threading.Thread(target=work, args=(p,)) for p in [4, 6, 3, 7, 5, 5, 12, 1] * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert worst[0] <= 12 and budget.stats()["peak_pixels"] <= 12  # 12 alone is over the budget and goes by itself
    assert budget.stats()["pixels_in_use"] == 0


def test_port_in_use_is_reported_before_anything_is_announced(trained_run, tmp_path):
    from conftest import run_cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", str(trained_run), "--port", str(port), cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert "could not listen on 127.0.0.1:" in done.stderr and "serving" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("options, words", [
    (["--host", "0.0.0.0"], "--host 0.0.0.0 serves every network of this machine: give --allowed-hosts"),
    (["--allowed-hosts", "a*b.example"], "--allowed-hosts: 'a*b.example' is not a host name"),
    (["--max-decoded-pixels", "10", "--max-pixels", "100"], "--max-decoded-pixels: must be at least --max-pixels"),
])
def test_serve_refuses_unsafe_or_impossible_settings(trained_run, tmp_path, options, words):
    from conftest import run_cli

    done = run_cli("serve", str(trained_run), "--port", "1", *options, cwd=tmp_path, timeout=120)
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_allowed_hosts_are_accepted(trained_run):
    s = Server(trained_run, "--allowed-hosts", "captions.example,*.lan")
    try:
        for host, status in (("captions.example", 200), ("box.lan", 200), ("evil.example", 400), ("127.0.0.1", 200)):
            assert httpx.get(s.url + "/healthz", headers={"Host": host}).status_code == status, host
    finally:
        s.stop()
