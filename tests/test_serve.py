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
    assert health["status"] == "ok" and health["model"]["encoder"] == "small"
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
        s.sendall(b"POST /v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
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
