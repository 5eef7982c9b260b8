"""The HTTP service: FastAPI routes over a Captioner, a micro-batcher, and the web page.

    GET  /              the web page (drop, paste or choose a picture)
    GET  /healthz       liveness, the model's description and batching statistics
    POST /v1/captions   multipart upload of one or more pictures (field `images`) -> captions as JSON
    GET  /docs          the API described from its OpenAPI schema (at /openapi.json), no external assets
    POST /              Hugging Face image-to-text (raw picture body or {"inputs": base64}) -> [{"generated_text"}]
    POST /v1/chat/completions, GET /v1/models   OpenAI chat completions with image_url data: URLs (compat.py)

The captions route runs in named stages, as a pipeline does: `decoding_options` (checked by the
library's one rule, 422 when refused), `read_uploads` (the multipart body within its deadline
and limits), `prepare_pictures` (decoded within the process-wide pixel budget), the batcher
(concurrent requests captioned together), and `respond`. Each picture gets its own result: a
caption, or an `error` with the `status` it would have alone (413/415/422); the request is 200
when any picture was captioned, otherwise it has the first picture's status and a one-line
`detail`. A request as a whole can get 400 (Host header not allowed), 408, 413, 415, 422 or 503,
never a 500 for bad input. The Host header must name this service (DNS rebinding), and the
service never fetches a URL for a client: pictures come only in the request body.
"""

from __future__ import annotations

import asyncio
import contextlib
from importlib import resources

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ..data.images import DecodeBudget
from ..decoding.options import HTTP, MAX_LENGTH
from ..errors import ArgumentError, ImageError
from . import compat
from .limits import BodyLimit, BodyTooLarge, HostCheck, InFlightLimit, Limits
from .microbatch import MicroBatcher

_CODES = {"format": 415, "too_large": 413, "empty": 422, "corrupt": 422, "missing": 422}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Alternative(BaseModel):
    caption: str
    logprob: float
    score: float


class ImageCaption(BaseModel):
    filename: str
    status: int = 200                            # this picture's own status: 413/415/422 when it was refused
    error: str | None = None                     # why it was refused (then caption is empty)
    caption: str
    logprob: float
    hypotheses: list[Alternative]
    attention: list[list[float]] | None = None   # per word of the best caption: weights over the grid
    grid_size: int | None = None


class CaptionsResponse(BaseModel):
    results: list[ImageCaption]


def upload_schema(limits: Limits) -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "minItems": 1, "maxItems": limits.max_images,
                                  "items": {"type": "string", "format": "binary"},
                                  "description": "one or more picture files (JPEG, PNG, GIF, WebP, BMP, TIFF)"}}}}}}}
RESPONSES = {400: {"description": "Host header not allowed"}, 408: {"description": "the upload was too slow"},
             413: {"description": "request too large, too many pictures, or every picture too large"},
             415: {"description": "not multipart, or every picture not an image"},
             422: {"description": "bad request, or no picture could be read"}, 503: {"description": "busy"}}


def _refused(name: str, error: ImageError) -> ImageCaption:
    return ImageCaption(filename=name, status=_CODES.get(error.kind, 422), error=str(error), caption="", logprob=0.0,
                        hypotheses=[])


# --- the stages of POST /v1/captions ---------------------------------------------------------------
def decoding_options(captioner, limits: Limits, spelling=HTTP, **asked):
    """The request's decoding options by the library's rule within the service's beam limit, or
    422 naming the parameter as the route's clients spell it."""
    for name in ("beam_size", "n_best"):
        value = asked.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > limits.max_beam:
            raise HTTPException(422, f"{spelling.name(name)}: at most {limits.max_beam} on this service, got {value}")
    try:
        return captioner.options(spelling, **asked)
    except ArgumentError as error:
        raise HTTPException(422, str(error)) from None


async def read_body(request: Request, limits: Limits) -> bytes:
    """A whole non-multipart body, within its deadline (its size is bounded by BodyLimit)."""
    try:
        return await asyncio.wait_for(request.body(), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"upload not finished within {limits.body_timeout_s:g} s") from None


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes | None, ImageError | None]]:
    """(name, bytes, error) per uploaded picture, the body read within its deadline and limits."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise HTTPException(415, "send the pictures as multipart/form-data in the field 'images'")
    too_many = f"too many pictures (more than {limits.max_images} per request)"
    try:
        form = await asyncio.wait_for(request.form(max_files=limits.max_images, max_fields=50), limits.body_timeout_s)
    except asyncio.TimeoutError:
        raise HTTPException(408, f"upload not finished within {limits.body_timeout_s:g} s") from None
    except BodyTooLarge:
        raise
    except Exception as error:  # malformed multipart, too many parts
        message = str(getattr(error, "detail", "") or error)
        if message.startswith("Too many files"):  # the multipart parser stops at max_files
            raise HTTPException(413, too_many) from None
        raise HTTPException(422, f"malformed multipart body ({message[:120] or error.__class__.__name__})") from None
    files = [v for k, v in form.multi_items() if k in ("images", "image") and isinstance(v, UploadFile)]
    if not files:
        raise HTTPException(422, "no pictures: send one or more files in the multipart field 'images'")
    if len(files) > limits.max_images:
        raise HTTPException(413, too_many)
    blobs = []
    for i, upload in enumerate(files):
        data = await upload.read(limits.max_file_bytes + 1)
        name = upload.filename or f"image {i + 1}"
        if len(data) > limits.max_file_bytes:
            blobs.append((name, None, ImageError(name, f"file too large (over {limits.max_file_bytes:,} bytes)",
                                                 "too_large")))
        else:
            blobs.append((name, data, None))
    return blobs


def prepare_pictures(captioner, blobs, max_pixels: int, budget: DecodeBudget) -> list[tuple[list | None, ImageError | None]]:
    """Each picture decoded and shaped within the process-wide pixel budget (in a worker thread)."""
    out = []
    for name, data, error in blobs:
        if error is None:
            tensors, errors = captioner.load_images([data], max_pixels=max_pixels, names=[name], budget=budget)
            out.append((tensors[0], errors[0]))
        else:
            out.append((None, error))
    return out


def respond(captioner, blobs, prepared, hyps, options) -> CaptionsResponse:
    results, captioned = [], iter(hyps)
    for (name, _, _), (_, error) in zip(blobs, prepared):
        if error is not None:
            results.append(_refused(name, error))
            continue
        h = next(captioned)
        best = h[0] if h else None
        results.append(ImageCaption(
            filename=name, caption=best.caption if best else "", logprob=best.logprob if best else 0.0,
            hypotheses=[Alternative(caption=x.caption, logprob=x.logprob, score=x.score) for x in h],
            attention=best.attention if (options.return_attention and best) else None,
            grid_size=captioner.grid_side if options.return_attention else None))
    return CaptionsResponse(results=results)


def describe(captioner, limits: Limits, max_pixels: int, budget: DecodeBudget, batcher: MicroBatcher) -> dict:
    """GET /healthz: the model, the limits, batching and decoding statistics."""
    config, transform = captioner.config, captioner.transform
    return {"status": "ok", "model": {"encoder": config.model.encoder, "decoder": config.model.decoder,
                                      "vocabulary": len(captioner.vocab), "ensemble": captioner.ensemble_size,
                                      "attention": captioner.has_attention, "grid_size": captioner.grid_side,
                                      "backend": captioner.backend,
                                      "transform": {"mode": transform.mode, "crop": transform.crop,
                                                    "resize": transform.resize},
                                      "beam_size": config.decode.beam_size},
            "limits": {"max_images": limits.max_images, "max_file_bytes": limits.max_file_bytes,
                       "max_request_bytes": limits.max_request_bytes, "max_pixels": max_pixels,
                       "max_beam": limits.max_beam, "max_decoded_pixels": budget.max_pixels,
                       "header_timeout_s": limits.header_timeout_s, "max_in_flight": limits.max_in_flight},
            "batching": dict(batcher.stats), "decoding": budget.stats()}


# --- the app -----------------------------------------------------------------------------------------
def create_app(captioner, limits: Limits | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               allowed_hosts: list[str] | None = None, model_name: str = "showtell") -> FastAPI:
    """The app. `allowed_hosts`: the names the Host header may carry (default: loopback names
    only, so that a web page elsewhere cannot reach a local service through DNS rebinding). The
    routes are defined inside, closing over the captioner, the limits and the batcher; each is a
    few lines over the stage functions above."""
    limits = limits or Limits()
    batcher = MicroBatcher(captioner, max_batch, max_wait_ms, limits.max_queue)
    max_pixels = min(limits.max_pixels, captioner.max_pixels)
    budget = DecodeBudget(max(limits.max_decoded_pixels, max_pixels))  # a picture at the limit always fits

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="showtell", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Image captioning with a Show and Tell model. POST pictures to /v1/captions; "
                              "the web page is at /.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(InFlightLimit, max_requests=limits.max_in_flight)
    app.add_middleware(HostCheck, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS))  # outermost
    app.state.batcher, app.state.limits, app.state.captioner, app.state.decode_budget = batcher, limits, captioner, budget
    static = resources.files("showtell.serve").joinpath("static")
    page = static.joinpath("index.html").read_text(encoding="utf-8")
    docs_page = static.joinpath("docs.html").read_text(encoding="utf-8")

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse({"detail": f"request body too large (over {limits.max_request_bytes:,} bytes)"}, status_code=413)

    @app.get("/", response_class=HTMLResponse, summary="the web page (drop, paste or choose a picture)")
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.options("/", include_in_schema=False)
    def allowed() -> Response:   # one answer for the two routes at /, each of which knows only its own method
        return Response(status_code=204, headers={"Allow": "GET, POST"})

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:  # rendered in the browser from /openapi.json; nothing from a CDN
        return HTMLResponse(docs_page)

    @app.get("/healthz")
    def healthz() -> dict:
        return describe(captioner, limits, max_pixels, budget, batcher)

    @app.post("/v1/captions", response_model=CaptionsResponse, openapi_extra=upload_schema(limits), responses=RESPONSES)
    async def captions(request: Request,
                       beam_size: int = Query(None, ge=1, le=limits.max_beam, description="beam width (1: greedy)"),
                       n_best: int = Query(1, ge=1, le=limits.max_beam,
                                           description="alternatives per picture (at most beam_size, whose default "
                                                       f"here is {captioner.config.decode.beam_size})"),
                       # only a model that attends offers its maps, so the schema promises what this model does
                       attention: bool = Query(False, include_in_schema=captioner.has_attention,
                                               description="include per-word attention maps")):
        options = decoding_options(captioner, limits, beam_size=beam_size, n_best=n_best, return_attention=attention)
        blobs = await read_uploads(request, limits)
        prepared, hyps = await caption_pictures(blobs, options)
        if not hyps:
            first = prepared[0][1]
            return JSONResponse({"detail": str(first), "results": [
                _refused(name, error).model_dump() for (name, _, _), (_, error) in zip(blobs, prepared)]},
                status_code=_CODES.get(first.kind, 422))
        return respond(captioner, blobs, prepared, hyps, options)

    async def caption_pictures(blobs, options) -> tuple[list, list]:
        """(each picture decoded or its error, the captions of those decoded) through the batcher."""
        prepared = await run_in_threadpool(prepare_pictures, captioner, blobs, max_pixels, budget)
        good = [tensors for tensors, error in prepared if error is None]
        if not good:
            return prepared, []
        future = batcher.submit(good, options)
        try:
            return prepared, await asyncio.wait_for(asyncio.wrap_future(future), limits.caption_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(503, "captioning took too long; try again") from None

    async def caption_all(blobs, options) -> list:
        """The captions of every picture, or the first unreadable picture's status and message."""
        prepared, hyps = await caption_pictures(blobs, options)
        for _, error in prepared:
            if error is not None:
                raise HTTPException(_CODES.get(error.kind, 422), str(error))
        return hyps

    @app.post("/", openapi_extra=compat.image_to_text_schema(limits, MAX_LENGTH), responses=RESPONSES,
              summary="Hugging Face image-to-text: a picture -> [{generated_text}]")
    async def image_to_text(request: Request) -> list[dict]:
        blobs, asked = compat.image_to_text_request(request.headers.get("content-type", ""),
                                                    await read_body(request, limits), limits)
        options = decoding_options(captioner, limits, compat.HF_SPELLING, **asked)
        return compat.image_to_text_response(await caption_all(blobs, options))

    @app.post("/v1/chat/completions", openapi_extra=compat.chat_schema(limits, MAX_LENGTH),
              responses={**RESPONSES, 200: {"description": "the completion, or with stream: server-sent events",
                                            "content": {"application/json": {}, "text/event-stream": {}}}},
              summary="OpenAI chat completions: the messages' image_url parts (data: URLs) captioned")
    async def chat_completions(request: Request):
        try:
            blobs, asked, stream = compat.chat_request(await read_body(request, limits), limits)
            options = decoding_options(captioner, limits, compat.CHAT_SPELLING, **asked)
            hyps = await caption_all(blobs, options)
        except HTTPException as error:
            return JSONResponse(compat.openai_error(error.status_code, error.detail), status_code=error.status_code)
        except BodyTooLarge:
            return JSONResponse(compat.openai_error(413, f"request body too large (over {limits.max_request_bytes:,} "
                                                         "bytes)"), status_code=413)
        if stream:
            return StreamingResponse(compat.chat_stream(model_name, hyps, options.n_best), media_type="text/event-stream")
        return compat.chat_response(model_name, hyps, options.n_best)

    @app.get("/v1/models", summary="the one model this service runs (OpenAI clients list models)")
    def models() -> dict:
        return compat.models_response(model_name)

    return app
