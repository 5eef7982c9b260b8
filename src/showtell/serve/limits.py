"""What the service accepts, and how it keeps a stranger from exhausting it.

`Limits` gathers every bound. Three guards enforce the ones that act before a route runs:
`BodyLimit` refuses request bodies over the limit (by Content-Length, or while they arrive),
`InFlightLimit` answers 503 beyond `max_in_flight` requests being handled at once, and
`HeaderDeadline` (uvicorn's h11 protocol with a deadline) closes a connection that has not sent
its whole request headers within `header_timeout_s` of opening or of its last response. Idle and
slow-header connections therefore cost a socket for a few seconds and never count against the
requests that did arrive (uvicorn's own `limit_concurrency` counts every open connection, so 256
silent ones made every other request 503).

`HostCheck` answers 400 to a Host header that does not name this service (DNS rebinding). It
reads the header as HTTP writes it, an IPv6 address in brackets (`[::1]:8000`), and compares
addresses, not spellings: `--host ::1` answers every client that reaches it on [::1] (Starlette's
own check compared `[::1]` with `::1`, or cut the header at its first colon, and refused them all).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from fastapi.responses import JSONResponse, PlainTextResponse
from uvicorn.protocols.http.h11_impl import H11Protocol


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
    header_timeout_s: float = 10.0         # a connection must finish its request headers within this
    max_in_flight: int = 256               # requests being handled at once (headers complete); beyond: 503


_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")


def host_key(host: str) -> str:
    """A host name or address as compared: lower case, an IPv6 address without brackets in its
    shortest form (`[0:0::1]` and `::1` are one address)."""
    host = host.lower()
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            return ipaddress.IPv6Address(bare).compressed
        except ValueError:
            return host
    return bare


def host_of(header: str | None) -> str | None:
    """The host a Host header names (`host_key`, port dropped), or None when malformed: an IPv6
    address must be in brackets, a port must be digits."""
    if not header:
        return None
    if header.startswith("["):
        address, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
            return None
        try:
            return ipaddress.IPv6Address(address).compressed
        except ValueError:
            return None
    name, colon, port = header.partition(":")
    if not _REG_NAME.fullmatch(name) or (colon and not port.isdigit()):
        return None
    return host_key(name)


class HostCheck:
    """ASGI middleware: 400 unless the Host header names one of `allowed_hosts` (names, addresses
    with or without brackets, '*.example.org' for its subdomains, or '*' for any)."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app, self.any = app, "*" in allowed_hosts
        self.names = {host_key(h) for h in allowed_hosts if not h.startswith("*")}
        self.suffixes = tuple(h[1:].lower() for h in allowed_hosts if h.startswith("*."))

    def allows(self, header: str | None) -> bool:
        host = host_of(header)
        return host is not None and (host in self.names or (bool(self.suffixes) and host.endswith(self.suffixes)))

    async def __call__(self, scope, receive, send):
        if self.any or scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        header = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None)
        if not self.allows(header):
            return await PlainTextResponse("Invalid host header", status_code=400)(scope, receive, send)
        await self.app(scope, receive, send)


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


class InFlightLimit:
    """ASGI middleware: at most `max_requests` HTTP requests handled at once; the next get 503."""

    def __init__(self, app, max_requests: int):
        self.app, self.max_requests, self.active = app, max_requests, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.active >= self.max_requests:
            response = JSONResponse({"detail": "busy: too many requests at once; try again shortly"}, status_code=503)
            return await response(scope, receive, send)
        self.active += 1       # one event loop: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


class HeaderDeadline(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not finish their request headers within
    `header_timeout` seconds of opening or of their last response (slowloris)."""

    header_timeout = 10.0
    _deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.header_timeout, self._expire)

    def _expire(self) -> None:
        waiting_for_headers = self.cycle is None or self.cycle.response_complete
        if waiting_for_headers and not self.transport.is_closing():
            self.transport.close()


def header_deadline(seconds: float) -> type[HeaderDeadline]:
    """The protocol class for uvicorn's `http=` setting, with this deadline."""
    return type("HeaderDeadline", (HeaderDeadline,), {"header_timeout": float(seconds)})
