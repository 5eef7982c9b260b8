"""The clients people already have, driven for real against `showtell serve` on 127.0.0.1: Hugging
Face's InferenceClient.image_to_text and the openai client's chat completions get the caption that
Captioner.caption gives for the same picture and settings, and bad input gets one line."""

from __future__ import annotations

import base64

import httpx
import pytest
from conftest import Server

from showtell import Captioner

huggingface_hub = pytest.importorskip("huggingface_hub")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def served(trained_run):
    server = Server(trained_run)
    yield server, Captioner.load(trained_run)
    server.stop()


@pytest.fixture(scope="module")
def pictures(synth_dir):
    return [str(p) for p in sorted((synth_dir / "images").iterdir())[:3]]


def _data_url(path: str) -> str:
    return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()


def _chat(served, *parts, **more):
    server, _ = served
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.create(model="any", messages=[{"role": "user", "content": list(parts)}], **more)


def test_hugging_face_image_to_text_with_a_file_bytes_and_json(served, pictures):
    server, captioner = served
    client = huggingface_hub.InferenceClient(model=server.url)
    for picture in pictures:
        assert client.image_to_text(picture).generated_text == captioner.caption(picture).caption
    with open(pictures[0], "rb") as f:
        assert client.image_to_text(f.read()).generated_text == captioner.caption(pictures[0]).caption
    body = {"inputs": base64.b64encode(open(pictures[1], "rb").read()).decode(),
            "parameters": {"num_beams": 3, "num_return_sequences": 2}}
    answer = httpx.post(server.url + "/", json=body, timeout=60)
    expected = captioner.caption(pictures[1], beam_size=3, n_best=2)
    assert answer.status_code == 200 and answer.json() == [{"generated_text": h.caption} for h in expected.hypotheses]


def test_openai_chat_completions_plain_n_best_and_streamed(served, pictures):
    _, captioner = served
    text = {"type": "text", "text": "What is in this picture?"}
    images = [{"type": "image_url", "image_url": {"url": _data_url(p)}} for p in pictures[:2]]
    done = _chat(served, text, *images)
    assert done.choices[0].message.content == "\n".join(r.caption for r in captioner.caption(pictures[:2]))
    assert done.usage.completion_tokens == len(done.choices[0].message.content.split())
    two = _chat(served, images[0], n=2)
    expected = captioner.caption(pictures[0], beam_size=2, n_best=2)
    assert [c.message.content for c in two.choices] == [h.caption for h in expected.hypotheses]
    chunks = list(_chat(served, images[0], stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == captioner.caption(pictures[0]).caption
    listed = openai.OpenAI(base_url=served[0].url + "/v1", api_key="unused").models.list()
    assert [m.id for m in listed.data] == [done.model] == ["tiny"]          # the run folder's name


def test_bad_input_is_one_line_with_its_status(served, synth_dir):
    server, _ = served
    with pytest.raises(openai.UnprocessableEntityError, match="never fetches a URL"):
        _chat(served, {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/cat.png"}})
    with pytest.raises(openai.UnprocessableEntityError, match="no image_url part"):
        _chat(served, {"type": "text", "text": "hello"})
    not_a_picture = "data:image/png;base64," + base64.b64encode(b"not a picture").decode()
    with pytest.raises(openai.APIStatusError) as refused:
        _chat(served, {"type": "image_url", "image_url": {"url": not_a_picture}})
    assert refused.value.status_code in (415, 422) and "\n" not in refused.value.message
    cases = [({"content-type": "text/plain"}, b"hello", 415), ({"content-type": "application/json"}, b"{", 422),
             ({"content-type": "application/json"}, b'{"inputs": "@@@"}', 422),
             ({"content-type": "application/json"}, b'{"inputs": "aGk=", "parameters": {"temperature": 2}}', 422),
             ({"content-type": "image/png"}, b"not a picture", 415)]
    for headers, body, status in cases:
        answer = httpx.post(server.url + "/", content=body, headers=headers, timeout=60)
        assert answer.status_code == status, (body, answer.text)
        assert "\n" not in answer.json()["detail"]
    too_large = httpx.post(server.url + "/", content=b"\x89PNG" + bytes(10 << 20), timeout=60)   # over --max-upload-mb
    assert too_large.status_code == 413 and "file too large" in too_large.json()["detail"]
    picture = base64.b64encode(open(sorted((synth_dir / "images").iterdir())[0], "rb").read()).decode()
    wide = httpx.post(server.url + "/", json={"inputs": picture, "parameters": {"num_beams": 11}}, timeout=60)
    assert wide.status_code == 422 and wide.json()["detail"].startswith("num_beams: at most 10"), wide.text
    first = str(sorted((synth_dir / "images").iterdir())[0])
    with pytest.raises(openai.UnprocessableEntityError, match=" n: at most 10 on this service"):
        _chat(served, {"type": "image_url", "image_url": {"url": _data_url(first)}}, n=11)


def test_null_parameters_mean_the_defaults(served, pictures):
    server, captioner = served
    picture = base64.b64encode(open(pictures[0], "rb").read()).decode()
    for parameters, beam, best in (({"num_return_sequences": None}, None, 1),
                                   ({"num_beams": None, "num_return_sequences": 2}, 2, 2), (None, None, 1)):
        answer = httpx.post(server.url + "/", json={"inputs": picture, "parameters": parameters}, timeout=60)
        expected = captioner.caption(pictures[0], beam_size=beam, n_best=best)
        assert answer.status_code == 200, answer.text
        assert answer.json() == [{"generated_text": h.caption} for h in expected.hypotheses]
