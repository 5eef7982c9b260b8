"""The contracts of the clients people already have, read into the service's own stages.

    POST /                     Hugging Face image-to-text, as `InferenceClient(URL).image_to_text()` and
                               Inference Endpoints handlers send it: the picture as the raw body (image/*,
                               application/octet-stream or no type), or JSON {"inputs": "<base64>", "parameters": {...}}
                               -> [{"generated_text": "..."}], one entry per alternative, best first
    POST /v1/chat/completions  OpenAI chat completions: the pictures are the `image_url` parts (data: URLs)
                               of the messages; text parts are read and ignored; `n` alternatives per picture
    GET  /v1/models            the one model, for OpenAI clients that list models first

Each request becomes what /v1/captions has after its own reading stage: a list of (name, bytes,
error) pictures and the decoding options asked for, by the library's names, so the limits, the
errors, the micro-batching and the captions are the same on every route. The service never
fetches a URL: a picture given by http(s) address is refused in one line.
"""

from __future__ import annotations

import base64
import binascii
import json
import time

from fastapi import HTTPException

from ..decoding.options import MAX_LENGTH, Spelling, whole_number
from ..errors import ArgumentError
from .limits import Limits

# Hugging Face's generation names -> showtell's decoding options
HF_PARAMETERS = {"num_beams": "beam_size", "num_return_sequences": "n_best", "max_new_tokens": "max_length"}
# how each route's clients spell the options, so a refusal names what they sent (decoding/options.Spelling)
HF_SPELLING = Spelling(tuple((ours, theirs) for theirs, ours in HF_PARAMETERS.items()))
CHAT_SPELLING = Spelling((("beam_size", "n"), ("n_best", "n"), ("max_length", "max_tokens")))
RAW_TYPES = ("image/", "application/octet-stream")
FINGERPRINT = "showtell: pictures only; text parts of the messages are read and ignored"


def _base64_picture(text, name: str, limits: Limits, what: str) -> tuple[str, bytes | None, None]:
    if not isinstance(text, str):
        raise HTTPException(422, f"{what}: expected a base64 string")
    if len(text) > (limits.max_file_bytes + 2) // 3 * 4 + 4:
        raise HTTPException(413, f"{what}: picture too large (over {limits.max_file_bytes:,} bytes)")
    try:
        return name, base64.b64decode(text, validate=True), None
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{what}: not valid base64") from None


def _json_body(body: bytes, what: str):
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise HTTPException(422, f"{what}: not valid JSON") from None


def _number(value):
    """JSON's 3.0 is the integer 3 (JSON Schema says so), not a fraction a whole-number option refuses."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _decoding_names(parameters, where: str) -> dict:
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise HTTPException(422, f"{where}: expected an object")
    asked = {}
    for key, value in parameters.items():
        if key not in HF_PARAMETERS:
            raise HTTPException(422, f"{where}: unknown parameter {key!r} (expected {', '.join(sorted(HF_PARAMETERS))})")
        if value is not None:   # null: the default, as the schema says
            asked[HF_PARAMETERS[key]] = _number(value)
    return asked


def image_to_text_request(content_type: str, body: bytes, limits: Limits) -> tuple[list, dict]:
    """(pictures, decoding options) of a Hugging Face image-to-text request."""
    content_type = content_type.split(";")[0].strip().lower()
    if not content_type or content_type.startswith(RAW_TYPES):   # InferenceClient sends raw bytes with no type
        if not body:
            raise HTTPException(422, "empty body: send the picture's bytes")
        if len(body) > limits.max_file_bytes:
            raise HTTPException(413, f"image: file too large (over {limits.max_file_bytes:,} bytes)")
        return [("image", body, None)], {}
    if content_type != "application/json":
        raise HTTPException(415, "send the picture as the body (image/* or application/octet-stream) or as JSON "
                                 '{"inputs": "<base64>"}')
    payload = _json_body(body, "body")
    if not isinstance(payload, dict) or "inputs" not in payload:
        raise HTTPException(422, 'body: expected {"inputs": "<base64 picture>", "parameters": {...}}')
    picture = _base64_picture(payload["inputs"], "image", limits, "inputs")
    asked = _decoding_names(payload.get("parameters"), "parameters")
    if "n_best" in asked and "beam_size" not in asked:   # n alternatives need a beam at least n wide
        asked["beam_size"] = asked["n_best"]
    return [picture], asked


def image_to_text_response(hyps_per_picture) -> list[dict]:
    return [{"generated_text": h.caption} for h in hyps_per_picture[0]]


def _data_url(url, index: int, limits: Limits) -> tuple[str, bytes | None, None]:
    where = f"messages: image_url {index + 1}"
    if not isinstance(url, str):
        raise HTTPException(422, f"{where}: expected a data: URL")
    if not url.startswith("data:"):
        raise HTTPException(422, f"{where}: the service never fetches a URL; send the picture inline as "
                                 "data:image/png;base64,...")
    header, comma, data = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise HTTPException(422, f"{where}: expected a base64 data: URL (data:image/png;base64,...)")
    return _base64_picture(data, f"image {index + 1}", limits, where)


def chat_request(body: bytes, limits: Limits) -> tuple[list, dict, bool]:
    """(pictures, decoding options, stream) of an OpenAI chat-completions request."""
    payload = _json_body(body, "body")
    if not isinstance(payload, dict) or not isinstance(payload.get("messages"), list):
        raise HTTPException(422, "body: expected {\"model\": ..., \"messages\": [...]}")
    if not isinstance(payload.get("model", ""), str):
        raise HTTPException(422, "model: expected a string")
    urls = []
    for m, message in enumerate(payload["messages"]):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, (str, list)) or not isinstance(message.get("role", ""), str):
            raise HTTPException(422, f"messages: message {m + 1}: expected {{\"role\": ..., \"content\": text or parts}}")
        for part in content if isinstance(content, list) else []:
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise HTTPException(422, f"messages: message {m + 1}: each part is an object with a \"type\"")
            if part["type"] == "image_url":
                image_url = part.get("image_url")
                urls.append(image_url.get("url") if isinstance(image_url, dict) else image_url)
    if not urls:
        raise HTTPException(422, "messages: no image_url part; send each picture as "
                                 '{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}')
    if len(urls) > limits.max_images:
        raise HTTPException(413, f"too many pictures (more than {limits.max_images} per request)")
    pictures = [_data_url(url, i, limits) for i, url in enumerate(urls)]
    n = _number(payload.get("n", 1))
    n = 1 if n is None else n
    # n alternatives need a beam at least n wide; beam search is what gives them
    asked = {"n_best": n, "beam_size": n} if n != 1 else {}
    lengths = [_number(payload.get(k)) for k in ("max_completion_tokens", "max_tokens") if payload.get(k) is not None]
    for length in lengths[1:]:   # both given: the first is used, and each must be one the service takes
        try:
            whole_number(length, "max_tokens", maximum=MAX_LENGTH)
        except ArgumentError as error:
            raise HTTPException(422, str(error)) from None
    if lengths:
        asked["max_length"] = lengths[0]
    stream = payload.get("stream")
    stream = False if stream is None else stream
    if not isinstance(stream, bool):
        raise HTTPException(422, "stream: expected true or false")
    return pictures, asked, stream


def _choice_texts(hyps_per_picture, n: int) -> list[str]:
    """Choice i: each picture's i-th caption, one line per picture."""
    return ["\n".join(h[i].caption if i < len(h) else "" for h in hyps_per_picture) for i in range(n)]


def _usage(texts: list[str]) -> dict:
    words = sum(len(t.split()) for t in texts)     # the words decoded; the pictures are not tokens
    return {"prompt_tokens": 0, "completion_tokens": words, "total_tokens": words}


def chat_response(model: str, hyps_per_picture, n: int) -> dict:
    texts = _choice_texts(hyps_per_picture, n)
    return {"id": f"chatcmpl-{time.time_ns():x}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": FINGERPRINT,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop",
                         "logprobs": None} for i, text in enumerate(texts)],
            "usage": _usage(texts)}


def chat_stream(model: str, hyps_per_picture, n: int):
    """Server-sent events: each choice's whole caption as one chunk, its end, then [DONE]."""
    texts = _choice_texts(hyps_per_picture, n)
    head = {"id": f"chatcmpl-{time.time_ns():x}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model, "system_fingerprint": FINGERPRINT}
    for i, text in enumerate(texts):
        for delta, finish in (({"role": "assistant", "content": text}, None), ({}, "stop")):
            yield f"data: {json.dumps({**head, 'choices': [{'index': i, 'delta': delta, 'finish_reason': finish}]})}\n\n"
    yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(texts)})}\n\n"
    yield "data: [DONE]\n\n"


def models_response(model: str) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "showtell"}]}


def openai_error(status: int, message: str) -> dict:
    kind = {413: "request_too_large", 503: "server_busy"}.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


# OpenAPI request bodies (the routes read the body themselves, so FastAPI cannot infer them). A
# picture is described by its own formats ("picture": the bytes of an image file; "picture-base64";
# "picture-data-url"), since no schema can say "bytes that decode as an image"; what a schema cannot
# say across fields (n-best within the beam, pictures per request across messages) is in the text.
PICTURE_FORMATS = ("picture", "picture-base64", "picture-data-url")


def image_to_text_schema(limits: Limits, max_length: int) -> dict:
    raw = {"schema": {"type": "string", "format": "picture", "description": "the picture file's bytes"}}
    beam = {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_beam}
    parameters = {"type": "object", "additionalProperties": False,
                  "properties": {"num_beams": beam, "num_return_sequences": beam,
                                 "max_new_tokens": {"type": ["integer", "null"], "minimum": 1, "maximum": max_length}},
                  "description": "num_return_sequences at most num_beams, which defaults to it; null: the default"}
    return {"requestBody": {"required": True, "content": {
        "image/png": raw, "image/jpeg": raw, "application/octet-stream": raw,
        "application/json": {"schema": {"type": "object", "required": ["inputs"], "properties": {
            "inputs": {"type": "string", "format": "picture-base64", "description": "the picture's bytes in base64"},
            "parameters": {"anyOf": [parameters, {"type": "null"}]}}}}}}}


def chat_schema(limits: Limits, max_length: int) -> dict:
    image_part = {"type": "object", "required": ["type", "image_url"], "properties": {
        "type": {"const": "image_url"},
        "image_url": {"type": "object", "required": ["url"], "properties": {
            "url": {"type": "string", "format": "picture-data-url", "description": "data:image/...;base64,..."}}}}}
    part = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}},
            "description": "image_url parts are captioned; text and other parts are read and ignored"}
    message = {"type": "object", "required": ["content"], "properties": {
        "role": {"type": "string"},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": part}]}}}
    with_picture = {"type": "object", "required": ["content"], "properties": {
        "content": {"type": "array", "contains": image_part}}}
    bounded = {"type": ["integer", "null"], "minimum": 1, "maximum": max_length, "description": "null: the run's own"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
        "type": "object", "required": ["messages"], "properties": {
            "model": {"type": "string", "description": "any name: the service runs one model"},
            "messages": {"type": "array", "items": message, "contains": with_picture,
                         "description": f"every image_url part is a picture, at most {limits.max_images} in all"},
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": limits.max_beam,
                  "description": "alternatives per picture (from a beam as wide); null: 1"},
            "max_tokens": bounded, "max_completion_tokens": bounded,
            "stream": {"type": ["boolean", "null"], "description": "server-sent events: each caption as one chunk"}}}}}}}
