"""The HTTP service: FastAPI, a micro-batcher, and the web page.

    GET  /              the web page (drop, paste or choose a picture)
    GET  /healthz       liveness, the model's description and batching statistics
    POST /v1/captions   multipart upload of one or more pictures (field `images`) -> captions as JSON
    GET  /docs          the API described from its OpenAPI schema (at /openapi.json), no external assets

Concurrent requests are queued and captioned together: a worker thread takes whatever has
arrived (up to `max_batch` pictures, waiting at most `max_wait_ms` for company) and decodes it in
one batched pass. Uploads are checked before anything is decoded: request and file size,
number of pictures, pixel count. Each picture gets its own result: a caption, or an `error` with
the `status` it would have alone (413/415/422); the request is 200 when any picture was
captioned, otherwise it has the first picture's status and a one-line `detail`. A request as a
whole can get 400 (Host header not allowed), 408, 413 (body or number of pictures), 415, 422 or
503, never a 500 for bad input. At most `max_decoded_pixels` pixels are decoded at once (a
budget shared by all requests). The Host header must name this service (DNS rebinding), and
the service never fetches a URL for a client: pictures come only in the request body.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import queue
import socket
import threading
import time
from dataclasses import dataclass
from importlib import resources

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..data.images import DecodeBudget
from ..errors import ImageError, ShowtellError

log = logging.getLogger("showtell")


@dataclass
class Limits:
    max_request_bytes: int = 40 << 20      # whole request body
    max_file_bytes: int = 10 << 20         # one picture
    max_images: int = 16                   # pictures per request
    max_pixels: int = 40_000_000           # per picture, checked from the header before decoding
    max_decoded_pixels: int = 40_000_000   # decoded at once in this process, all requests together
    max_beam: int = 10
    body_timeout_s: float = 30.0           # a client must finish sending within this
    caption_timeout_s: float = 60.0        # queueing + decoding
    max_queue: int = 256                   # pictures waiting; beyond this: 503


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


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit, by Content-Length or while they arrive."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    response = JSONResponse({"detail": f"request body too large ({declared:,} bytes > "
                                                       f"{self.max_bytes:,})"}, status_code=413)
                    return await response(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge()
            return message

        await self.app(scope, limited_receive, send)


class MicroBatcher:
    """Collects pictures from concurrent requests and captions them in shared forward passes."""

    def __init__(self, captioner, max_batch: int = 32, max_wait_ms: float = 5.0, max_queue: int = 256):
        self.captioner, self.max_batch, self.max_wait = captioner, max_batch, max_wait_ms / 1000
        self.max_queue = max_queue
        self.queue: queue.Queue = queue.Queue()
        self.waiting = 0
        self.stats = {"batches": 0, "images": 0, "largest_batch": 0, "requests": 0}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="showtell-batcher", daemon=True)
        self._thread.start()

    def submit(self, tensors: list, options: tuple) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if self.waiting + len(tensors) > self.max_queue:
                raise HTTPException(503, "busy: too many pictures waiting; try again shortly")
            self.waiting += len(tensors)
        self.queue.put((tensors, options, future))
        return future

    def close(self) -> None:
        self.queue.put(None)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            jobs, count = [first], len(first[0])
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                try:
                    job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is None:
                    self.queue.put(None)
                    break
                jobs.append(job)
                count += len(job[0])
            groups: dict[tuple, list] = {}
            for job in jobs:
                groups.setdefault(job[1], []).append(job)
            for (beam, n_best, attention), group in groups.items():
                batch = [t for tensors, _, _ in group for t in tensors]
                try:
                    hyps = self.captioner.caption_tensors(batch, beam, n_best, return_attention=attention)
                except Exception as error:  # a model failure is ours, not the client's: 500 with a message
                    log.exception("captioning failed")
                    for _, _, future in group:
                        future.set_exception(error)
                    continue
                finally:
                    with self._lock:
                        self.waiting -= len(batch)
                with self._lock:
                    self.stats["batches"] += 1
                    self.stats["images"] += len(batch)
                    self.stats["requests"] += len(group)
                    self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
                start = 0
                for tensors, _, future in group:
                    future.set_result(hyps[start:start + len(tensors)])
                    start += len(tensors)


_CODES = {"format": 415, "too_large": 413, "empty": 422, "corrupt": 422, "missing": 422}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def create_app(captioner, limits: Limits | None = None, max_batch: int = 32, max_wait_ms: float = 5.0,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app. `allowed_hosts`: the names the Host header may carry (default: loopback names
    only, so that a web page elsewhere cannot reach a local service through DNS rebinding)."""
    limits = limits or Limits()
    batcher = MicroBatcher(captioner, max_batch, max_wait_ms, limits.max_queue)
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="showtell", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Image captioning with a Show and Tell model. POST pictures to /v1/captions; "
                              "the web page is at /.")
    app.add_middleware(BodyLimit, max_bytes=limits.max_request_bytes)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts or LOOPBACK_HOSTS))  # outermost
    app.state.batcher, app.state.limits, app.state.captioner = batcher, limits, captioner
    static = resources.files("showtell.serve").joinpath("static")
    page = static.joinpath("index.html").read_text(encoding="utf-8")
    docs_page = static.joinpath("docs.html").read_text(encoding="utf-8")
    max_pixels = min(limits.max_pixels, captioner.max_pixels)
    budget = DecodeBudget(max(limits.max_decoded_pixels, max_pixels))  # a picture at the limit always fits
    app.state.decode_budget = budget
    transform = captioner.models[0].transform

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge):
        return JSONResponse({"detail": f"request body too large (over {limits.max_request_bytes:,} bytes)"}, status_code=413)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:  # rendered in the browser from /openapi.json; nothing from a CDN
        return HTMLResponse(docs_page)

    @app.get("/healthz")
    def healthz() -> dict:
        config = captioner.config
        return {"status": "ok", "model": {"encoder": config.model.encoder, "decoder": config.model.decoder,
                                          "vocabulary": len(captioner.vocab), "ensemble": len(captioner.models),
                                          "attention": captioner.has_attention, "grid_size": captioner.grid_side,
                                          "transform": {"mode": transform.mode, "crop": transform.crop,
                                                        "resize": transform.resize},
                                          "beam_size": config.decode.beam_size},
                "limits": {"max_images": limits.max_images, "max_file_bytes": limits.max_file_bytes,
                           "max_request_bytes": limits.max_request_bytes, "max_pixels": max_pixels,
                           "max_beam": limits.max_beam, "max_decoded_pixels": budget.max_pixels},
                "batching": dict(batcher.stats), "decoding": budget.stats()}

    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["images"],
        "properties": {"images": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "one or more pictures (JPEG, PNG, GIF, WebP, BMP, TIFF)"}}}}}}}

    @app.post("/v1/captions", response_model=CaptionsResponse, openapi_extra=upload_schema,
              responses={400: {"description": "Host header not allowed"},
                         408: {"description": "the upload was too slow"},
                         413: {"description": "request too large, too many pictures, or every picture too large"},
                         415: {"description": "not multipart, or every picture not an image"},
                         422: {"description": "bad request, or no picture could be read"},
                         503: {"description": "busy"}})
    async def captions(request: Request,
                       beam_size: int = Query(None, ge=1, le=limits.max_beam, description="beam width (1: greedy)"),
                       n_best: int = Query(1, ge=1, le=limits.max_beam,
                                           description="alternatives per picture (at most beam_size)"),
                       attention: bool = Query(False, description="include per-word attention maps (attention models)")):
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise HTTPException(415, "send the pictures as multipart/form-data in the field 'images'")
        beam = beam_size or captioner.config.decode.beam_size
        if n_best > beam:
            raise HTTPException(422, f"n_best: beam search keeps at most beam_size alternatives ({n_best} > {beam})")
        if attention and not captioner.has_attention:
            raise HTTPException(422, "attention: not an attention model (model.decoder=attention)")
        too_many = f"too many pictures (more than {limits.max_images} per request)"
        try:
            form = await asyncio.wait_for(request.form(max_files=limits.max_images, max_fields=50),
                                          limits.body_timeout_s)
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
        blobs = []  # (name, bytes or None, error)
        for i, upload in enumerate(files):
            data = await upload.read(limits.max_file_bytes + 1)
            name = upload.filename or f"image {i + 1}"
            if len(data) > limits.max_file_bytes:
                blobs.append((name, None, ImageError(name, f"file too large (over {limits.max_file_bytes:,} bytes)",
                                                     "too_large")))
            else:
                blobs.append((name, data, None))

        def prepare():  # each picture decoded within the process-wide pixel budget
            out = []
            for name, data, error in blobs:
                if error is None:
                    tensors, errors = captioner.load_images([data], max_pixels=max_pixels, names=[name], budget=budget)
                    out.append((tensors[0], errors[0]))
                else:
                    out.append((None, error))
            return out

        prepared = await run_in_threadpool(prepare)
        good = [tensors for tensors, error in prepared if error is None]
        if not good:
            first = prepared[0][1]
            return JSONResponse({"detail": str(first), "results": [
                _refused(name, error).model_dump() for (name, _, _), (_, error) in zip(blobs, prepared)]},
                status_code=_CODES.get(first.kind, 422))
        future = batcher.submit(good, (beam, n_best, attention))
        try:
            hyps = iter(await asyncio.wait_for(asyncio.wrap_future(future), limits.caption_timeout_s))
        except asyncio.TimeoutError:
            raise HTTPException(503, "captioning took too long; try again") from None
        results = []
        for (name, _, _), (_, error) in zip(blobs, prepared):
            if error is not None:
                results.append(_refused(name, error))
                continue
            h = next(hyps)
            best = h[0] if h else None
            results.append(ImageCaption(
                filename=name, caption=best.caption if best else "", logprob=best.logprob if best else 0.0,
                hypotheses=[Alternative(caption=x.caption, logprob=x.logprob, score=x.score) for x in h],
                attention=best.attention if (attention and best) else None,
                grid_size=captioner.grid_side if attention else None))
        return CaptionsResponse(results=results)

    return app


def _refused(name: str, error: ImageError) -> ImageCaption:
    return ImageCaption(filename=name, status=_CODES.get(error.kind, 422), error=str(error), caption="", logprob=0.0,
                        hypotheses=[])


def host_names(host: str, allowed_hosts: list[str] | None) -> list[str]:
    """The Host header values to accept: loopback names, the address served on (unless it is a
    wildcard) and `allowed_hosts`. A wildcard address without `allowed_hosts` is refused: the
    service cannot know the names its clients use, and accepting any would invite DNS rebinding."""
    extra = [name.strip() for entry in allowed_hosts or [] for name in entry.split(",") if name.strip()]
    for name in extra:
        if "*" in name[1:] or (name.startswith("*") and name != "*" and not name.startswith("*.")):
            raise ShowtellError(f"--allowed-hosts: {name!r} is not a host name or a '*.example.org' pattern")
    if host in ("0.0.0.0", "::", "") and not extra:
        raise ShowtellError(f"--host {host or repr('')} serves every network of this machine: give --allowed-hosts "
                            "with the names clients use to reach it (e.g. captions.example.org,192.168.1.20), "
                            "or '*' to accept any Host header")
    names = list(LOOPBACK_HOSTS)
    if host not in ("0.0.0.0", "::", ""):
        names.append(host)
    return names + extra


def listen(host: str, port: int) -> socket.socket:
    """A socket bound and listening on host:port, or a one-line error (before anything is announced)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:
        raise ShowtellError(f"--host {host}: not an address of this machine ({getattr(error, 'strerror', error)})") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise ShowtellError(f"could not listen on {host}:{port} ({error.strerror or error}; in use, or not an "
                            "address of this machine)") from None
    return sock


def serve(run: str, host: str = "127.0.0.1", port: int = 8000, device: str = "cpu", limits: Limits | None = None,
          max_batch: int = 32, max_wait_ms: float = 5.0, allowed_hosts: list[str] | None = None) -> None:
    import uvicorn

    from ..api import Captioner

    names = host_names(host, allowed_hosts)
    sock = listen(host, port)  # bind first: a port in use is reported before the model loads or anything is announced
    try:
        captioner = Captioner.load(run, device=device)
        app = create_app(captioner, limits, max_batch, max_wait_ms, allowed_hosts=names)
        if host not in LOOPBACK_HOSTS:
            log.warning("listening on %s: the service is reachable from other machines (Host header: %s)",
                        host, ", ".join(names))
        shown = f"[{host}]" if ":" in host else host
        log.info("serving %s on http://%s:%d (web page at /, API docs at /docs)", run, shown, port)
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, limit_concurrency=256)
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
