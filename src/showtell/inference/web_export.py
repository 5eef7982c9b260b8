"""Exporting a trained run as a static web page that captions in the browser, with no server.

`export_web(RUN, OUT)` writes

    OUT/index.html, page.js   the page: choose or drop pictures, read their captions (greedy or beam)
    OUT/showtell.js           the picture geometry and greedy / beam search, ported from data/images.py
                              and decoding/search.py, over the graphs run by onnxruntime-web (wasm)
    OUT/model.json            vocabulary, the run's transform (from onnx.json) and `decode` settings
    OUT/encoder.onnx, init_state.onnx, step.onnx   export.py's graphs, checked there against PyTorch
    OUT/onnxruntime-web/      the pinned onnxruntime-web files, when a local copy was given or found

onnxruntime-web is pinned (web/package.json, its lock file, and web/onnxruntime-web.json here with
the files' sha384): the page loads it from this folder when a copy is given (`ort_dir`) or found in
node_modules, so it works offline, and from jsDelivr otherwise; either way the browser checks the
integrity hashes before running a byte of it. The page fetches nothing but those files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from ..data.images import LONG_SIDE_LIMIT
from ..errors import ArgumentError, RunError
from ..fileio import atomic_write_text
from ..run import Run
from ..vocab import END, PAD, START, UNK
from .export import GRAPHS, export_onnx
from .onnx_runtime import MANIFEST

ASSETS = ("index.html", "page.js", "showtell.js")
ORT_FOLDER = "onnxruntime-web"
WEB_FILES = {*ASSETS, *GRAPHS, "model.json", ORT_FOLDER}
INTERPOLATIONS = ("box", "bilinear", "hamming", "bicubic", "lanczos")   # the filters showtell.js ports
FLAG = "--onnxruntime-web"


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("web", name).read_bytes()


def pinned() -> dict:
    """The onnxruntime-web version and file hashes the page is written for."""
    return json.loads(_asset("onnxruntime-web.json"))


def sri(data: bytes) -> str:
    return "sha384-" + base64.b64encode(hashlib.sha384(data).digest()).decode()


def _check_copy(folder: Path, pin: dict) -> str | None:
    """Why `folder` is not the pinned onnxruntime-web dist folder, or None."""
    for name in (pin["module"], pin["wasm"]):
        if not (folder / name).is_file():
            return f"holds no {name} (give onnxruntime-web's dist folder, e.g. node_modules/onnxruntime-web/dist)"
        if sri((folder / name).read_bytes()) != pin["integrity"][name]:
            return f"{name} is not onnxruntime-web {pin['version']}'s (its hash differs; npm ci in web/ installs it)"
    return None


def _node_modules() -> list[Path]:
    """Where npm puts onnxruntime-web: under the current folder, its web/, or this checkout's web/."""
    bases = [Path.cwd(), Path.cwd() / "web", Path(__file__).resolve().parents[3] / "web"]
    return [b / "node_modules" / "onnxruntime-web" / "dist" for b in bases]


def find_onnxruntime_web(given: str | Path | None) -> Path | None:
    """The local onnxruntime-web dist folder to copy, or None to load it from the CDN. A folder the
    user named must be right (one-line error otherwise); one found in node_modules is used if it is."""
    pin = pinned()
    if given is not None:
        folder = Path(given)
        if not folder.is_dir():
            raise ArgumentError(f"{FLAG}: {folder}: no such folder")
        if (folder / "dist").is_dir() and not (folder / pin["module"]).is_file():
            folder = folder / "dist"   # the package folder instead of its dist/
        problem = _check_copy(folder, pin)
        if problem:
            raise ArgumentError(f"{FLAG}: {folder}: {problem}")
        return folder
    return next((f for f in _node_modules() if f.is_dir() and _check_copy(f, pin) is None), None)


def _check_target(out: Path) -> None:
    """A new or empty folder, or an earlier web export (nothing else in it) that this one replaces."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: exists and is not a folder; export into a new or empty folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in WEB_FILES) if out.is_dir() else []
    if others:
        raise RunError(f"{out}: holds other files ({', '.join(others[:3])}); export --web into a new or empty "
                       "folder (nothing was written)")


def _runtime(pin: dict, local: Path | None) -> dict:
    """Where the page loads onnxruntime-web from, with the hashes the browser checks."""
    base = f"./{ORT_FOLDER}/" if local else pin["cdn"].format(version=pin["version"])
    return {"version": pin["version"], "local": local is not None, "module": base + pin["module"],
            "wasm": base + pin["wasm"], "integrity": {base + n: h for n, h in pin["integrity"].items()}}


def _page(runtime: dict) -> str:
    """index.html with its import map: onnxruntime-web's module, pinned by its integrity hash."""
    imports = {"imports": {"onnxruntime-web": runtime["module"]},
               "integrity": {runtime["module"]: runtime["integrity"][runtime["module"]]}}
    where = ("from this folder (works offline)" if runtime["local"]
             else "from cdn.jsdelivr.net, pinned by version and integrity hash")
    html = _asset("index.html").decode()
    return (html.replace("<!--IMPORTMAP-->", f'<script type="importmap">{json.dumps(imports)}</script>')
                .replace("<!--RUNTIME-->", f"onnxruntime-web {runtime['version']} {where}"))


def export_web(run: str | Path, out: str | Path, ort_dir: str | Path | None = None) -> Path:
    """The static captioning page for `run` in `out` (see the module docstring); one-line errors."""
    local = find_onnxruntime_web(ort_dir)
    out = Path(out)
    _check_target(out)
    config, vocab = Run(run).config(), Run(run).vocab()
    with tempfile.TemporaryDirectory(prefix="showtell-web-") as tmp:
        package = export_onnx(run, Path(tmp) / "onnx")   # refuses a Transformer as --onnx does
        manifest = json.loads((package / MANIFEST).read_text())
        transform = manifest["transform"]
        if transform["interpolation"] not in INTERPOLATIONS:
            raise RunError(f"export --web: the run resizes pictures with {transform['interpolation']!r}, which the "
                           f"page cannot do exactly as Pillow does (it can: {', '.join(INTERPOLATIONS)})")
        out.mkdir(parents=True, exist_ok=True)
        for name in GRAPHS:
            shutil.copyfile(package / name, out / f".{name}.tmp")
            (out / f".{name}.tmp").replace(out / name)
    runtime = _runtime(pinned(), local)
    d = config.decode
    info = {"format": "showtell-web-1", "decoder": manifest["decoder"], "state": manifest["state"],
            "transform": {**transform, "long_side_limit": LONG_SIDE_LIMIT}, "vocabulary": list(vocab.words),
            "special": {"pad": PAD, "start": START, "end": END, "unk": UNK}, "runtime": runtime,
            "decode": {"beam_size": d.beam_size, "max_length": d.max_length, "length_penalty": d.length_penalty,
                       "block_unk": d.block_unk}}
    atomic_write_text(out / "model.json", json.dumps(info) + "\n")
    for name in ("page.js", "showtell.js"):
        atomic_write_text(out / name, _asset(name).decode())
    atomic_write_text(out / "index.html", _page(runtime))
    shutil.rmtree(out / ORT_FOLDER, ignore_errors=True)
    if local:
        (out / ORT_FOLDER).mkdir()
        for name in (pinned()["module"], pinned()["wasm"]):
            shutil.copyfile(local / name, out / ORT_FOLDER / name)
    return out


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())
