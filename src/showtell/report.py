"""Pictures people would rather look at than read: the evaluation report, training curves,
captioned samples and attention maps.

`write_report` makes RUN/report.html with every evaluated image (thumbnail), its caption and
beam alternatives with their scores, its references and its own CIDEr, worst first (a button
flips the order), plus PNG plots of the training history. It has no external assets.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .data.images import load_image  # noqa: E402
from .errors import ImageError  # noqa: E402
from .fileio import atomic_write, atomic_write_text  # noqa: E402


def _save_figure(fig, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    plt.close(fig)


def history_plots(history: Sequence[dict], out_dir: Path) -> list[Path]:
    """loss.png (train/validation loss per evaluation) and metrics.png (validation scores)."""
    if not history:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    x = [r.get("step", i) for i, r in enumerate(history)]
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        points = [(s, r[key]) for s, r in zip(x, history) if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per word)")
    ax.set_title("teacher-forced loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save_figure(fig, out_dir / "loss.png")
    paths.append(out_dir / "loss.png")
    metric_keys = [k for k in ("val_CIDEr", "val_Bleu_4") if any(k in r for r in history)]
    if metric_keys:
        fig, ax = plt.subplots(figsize=(5.5, 3.2))
        for key in metric_keys:
            points = [(s, r[key]) for s, r in zip(x, history) if key in r]
            ax.plot(*zip(*points), marker="o", label=key[4:])
        ax.set_xlabel("step")
        ax.set_title("validation scores (decoded captions)")
        ax.legend()
        ax.grid(alpha=0.3)
        _save_figure(fig, out_dir / "metrics.png")
        paths.append(out_dir / "metrics.png")
    return paths


def _wrap(text: str, width: int = 34) -> str:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines)


def samples_figure(paths: Sequence[str | Path], captions: Sequence[str], references: Sequence[str],
                   out: Path, columns: int = 4) -> Path:
    """A grid of pictures with the model's caption (bold) and one reference under each."""
    rows = math.ceil(len(paths) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, caption, reference in zip(axes.flat, paths, captions, references):
        try:
            ax.imshow(load_image(path))
        except ImageError:
            continue
        wrapped = _wrap(caption)
        ax.text(0, -0.03, wrapped, transform=ax.transAxes, fontsize=9, fontweight="bold", va="top")
        below = -0.05 - 0.075 * (wrapped.count("\n") + 1)
        ax.text(0, below, "ref: " + _wrap(reference, 38), transform=ax.transAxes, fontsize=7.5, va="top", color="#555")
    fig.subplots_adjust(hspace=0.55, wspace=0.08)
    _save_figure(fig, out)
    return out


def attention_figure(image_source, hypothesis, grid_side: int, out: Path) -> tuple[Path, int]:
    """The picture once per word with that word's attention upsampled over it, word underneath;
    returns the file and the number of panels drawn."""
    image = load_image(image_source) if not isinstance(image_source, Image.Image) else image_source
    words = hypothesis.caption.split()
    weights = hypothesis.attention or []
    panels = len(words)
    columns = min(6, max(1, panels))
    rows = max(1, math.ceil(panels / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.5 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    side = 224
    shown = np.asarray(image.resize((side, side)))
    panels = 0
    for ax, word, alpha in zip(axes.flat, words, weights):
        panels += 1
        grid = np.asarray(alpha, dtype=np.float32).reshape(grid_side, grid_side)
        heat = np.asarray(Image.fromarray((grid / max(grid.max(), 1e-8) * 255).astype(np.uint8)).resize(
            (side, side), Image.BILINEAR), dtype=np.float32) / 255.0
        ax.imshow(shown)
        ax.imshow(heat, cmap="jet", alpha=0.45)
        ax.set_title(word, fontsize=11, y=-0.16)
    fig.tight_layout()
    _save_figure(fig, out)
    return out, panels


def _thumbnail(path: Path, out: Path, side: int = 160) -> bool:
    try:
        image = load_image(path)
    except ImageError:
        return False
    image.thumbnail((side, side))
    atomic_write(out, lambda f: image.save(f, format="JPEG", quality=85))
    return True


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
table.scores td,table.scores th{padding:.2em .8em;text-align:right}
table.scores th:first-child,table.scores td:first-child{text-align:left}
.item{display:flex;gap:1em;border-top:1px solid #ddd;padding:.6em 0}
.item img.thumb{width:160px;height:auto;flex:none}
.gen{font-weight:600;font-size:1.05em}.cider{color:#666;font-size:.9em}
ol.alts{margin:.2em 0;color:#444;font-size:.9em}ul.refs{margin:.2em 0;color:#555;font-size:.9em}
.bad{background:#fff3f3}.plots img{max-width:48%}
"""

_SCRIPT = """
function flip(){const l=document.getElementById('items');[...l.children].reverse().forEach(c=>l.appendChild(c));
const b=document.getElementById('order');b.textContent=b.textContent.includes('best')?'show worst first':'show best first';}
"""


def _marked(caption: str, positions) -> str:
    """The caption as HTML, the words at `positions` (a hallucinated object's name) in <mark>."""
    marked = set(positions)
    return " ".join(f"<mark>{html.escape(w)}</mark>" if j in marked else html.escape(w) for j, w in enumerate(caption.split()))


def write_report(run_dir: Path, title: str, scores: dict, human: dict, items: list[dict], history: Sequence[dict],
                 extra: dict | None = None) -> Path:
    """items: dicts with path, caption, alternatives [(caption, score)], references, cider,
    error and optional attention_png, hallucinated (objects) and marked_words (their positions
    in the caption); sorted worst CIDEr first."""
    files = run_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    plots = history_plots(history, files)
    rows = []
    ordered = sorted(items, key=lambda it: (it.get("cider") is None, it.get("cider") or 0.0))
    for n, item in enumerate(ordered):
        thumb = files / f"thumb{n:05d}.jpg"
        has_thumb = _thumbnail(Path(item["path"]), thumb)
        alts = "".join(f"<li>{html.escape(c)} <span class=cider>({s:.3f})</span></li>" for c, s in item.get("alternatives", []))
        refs = "".join(f"<li>{html.escape(r)}</li>" for r in item.get("references", []))
        cider = f"CIDEr {item['cider']:.3f}" if item.get("cider") is not None else ""
        attention = (f"<div><img src='report_files/{html.escape(item['attention_png'])}' style='max-width:600px'></div>"
                     if item.get("attention_png") else "")
        error = f"<div class=bad>{html.escape(item['error'])}</div>" if item.get("error") else ""
        image = f"<img class=thumb src='report_files/{thumb.name}' alt=''>" if has_thumb else "<div class=thumb></div>"
        caption = _marked(item.get("caption", ""), item.get("marked_words", ()))
        if item.get("hallucinated"):
            error += f"<div class=bad>not in the picture: {html.escape(', '.join(item['hallucinated']))}</div>"
        rows.append(f"<div class=item>{image}<div><div class=gen>{caption}</div>"
                    f"<div class=cider>{html.escape(Path(item['path']).name)} · {cider}</div>{error}"
                    f"<ol class=alts>{alts}</ol><ul class=refs>{refs}</ul>{attention}</div></div>")
    names = [m for m in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE") if m in scores]
    table = "".join(
        f"<tr><td>{m}</td><td>{scores[m]:.4f}</td><td>{human[m]:.4f}</td><td>{scores[m] / human[m]:.2f}</td></tr>"
        if m in human and human[m] else f"<tr><td>{m}</td><td>{scores[m]:.4f}</td><td></td><td></td></tr>" for m in names)
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in (extra or {}).items())
    plot_tags = "".join(f"<img src='report_files/{p.name}' alt='{p.stem}'>" for p in plots)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1><ul>{facts}</ul>"
            f"<table class=scores><tr><th>metric</th><th>model</th><th>human</th><th>model / human</th></tr>{table}</table>"
            f"<div class=plots>{plot_tags}</div><h2>Captions ({len(items)} images)</h2>"
            f"<button id=order onclick='flip()'>show best first</button><div id=items>{''.join(rows)}</div></body></html>")
    out = run_dir / "report.html"
    atomic_write_text(out, page)
    return out
