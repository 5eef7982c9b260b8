"""Running the service: the Host names it answers to, the socket, uvicorn."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from ..decoding.options import PYTHON, Spelling
from ..errors import ShowtellError
from ..inference.captioner import Captioner
from .app import LOOPBACK_HOSTS, create_app
from .limits import Limits, header_deadline

log = logging.getLogger("showtell")


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
          max_batch: int = 32, max_wait_ms: float = 5.0, allowed_hosts: list[str] | None = None,
          spelling: Spelling = PYTHON) -> None:
    """Load the run, bind host:port and serve until stopped (messages name options as `spelling` does)."""
    import uvicorn

    limits = limits or Limits()
    names = host_names(host, allowed_hosts)
    sock = listen(host, port)  # bind first: a port in use is reported before the model loads or anything is announced
    try:
        captioner = Captioner.load(run, device=device, spelling=spelling)
        app = create_app(captioner, limits, max_batch, max_wait_ms, allowed_hosts=names, model_name=Path(run).resolve().name or "showtell")
        if host not in LOOPBACK_HOSTS:
            log.warning("listening on %s: the service is reachable from other machines (Host header: %s)",
                        host, ", ".join(names))
        shown = f"[{host}]" if ":" in host else host
        log.info("serving %s on http://%s:%d (web page at /, API docs at /docs)", run, shown, port)
        config = uvicorn.Config(app, log_level="warning", timeout_keep_alive=5, http=header_deadline(limits.header_timeout_s))
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
