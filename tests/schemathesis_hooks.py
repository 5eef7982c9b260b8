"""What the service's schema cannot say, told to schemathesis (SCHEMATHESIS_HOOKS=schemathesis_hooks):
a "picture" is the bytes of an image file (generated here as small PNGs and JPEGs), and two rules
across fields: n-best within the beam, and at most SHOWTELL_MAX_IMAGES pictures across messages.
Schema-valid requests built this way must all be accepted (positive_data_acceptance)."""

from __future__ import annotations

import base64
import io
import os

import schemathesis
from hypothesis import strategies as st
from PIL import Image

DEFAULT_BEAM = int(os.environ.get("SHOWTELL_DEFAULT_BEAM", "1"))
MAX_IMAGES = int(os.environ.get("SHOWTELL_MAX_IMAGES", "4"))


def _encoded(size: tuple[int, int], colour: tuple[int, int, int], kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=kind)
    return buffer.getvalue()


SIZES = st.tuples(st.integers(4, 64), st.integers(4, 64))
COLOURS = st.tuples(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
PNG = st.builds(_encoded, SIZES, COLOURS, st.just("PNG"))
JPEG = st.builds(_encoded, SIZES, COLOURS, st.just("JPEG"))

schemathesis.openapi.media_type("image/png", PNG)
schemathesis.openapi.media_type("image/jpeg", JPEG)
schemathesis.openapi.media_type("application/octet-stream", PNG)
schemathesis.openapi.format("picture-base64", PNG.map(lambda b: base64.b64encode(b).decode()))
schemathesis.openapi.format("picture-data-url", PNG.map(lambda b: "data:image/png;base64," + base64.b64encode(b).decode()))


@schemathesis.hook
def flatmap_body(ctx, body):
    """Multipart uploads: each file in `images` becomes a picture (the count is kept)."""
    if isinstance(body, dict) and isinstance(body.get("images"), list):
        return st.lists(PNG, min_size=len(body["images"]), max_size=len(body["images"])).map(
            lambda pictures: {**body, "images": pictures})
    return st.just(body)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@schemathesis.hook
def filter_query(ctx, query):
    if not query or not _whole(query.get("n_best")):
        return True
    beam = query.get("beam_size", DEFAULT_BEAM)
    return not _whole(beam) or query["n_best"] <= beam


@schemathesis.hook
def filter_body(ctx, body):
    if not isinstance(body, dict):
        return True
    parameters = body.get("parameters")
    if isinstance(parameters, dict):
        beam, best = parameters.get("num_beams"), parameters.get("num_return_sequences")
        if _whole(beam) and _whole(best) and best > beam:
            return False
    messages = body.get("messages")
    if isinstance(messages, list):
        parts = [p for m in messages if isinstance(m, dict) and isinstance(m.get("content"), list)
                 for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url"]
        return len(parts) <= MAX_IMAGES
    return True
