"""Pictures people would rather look at than read: training curves, captioned samples, attention maps.

The curves and the grid of samples are matplotlib figures (a few per run). Attention maps are
drawn with PIL and NumPy, one image per picture (a strip of panels, the picture with a word's
attention over it and the word beneath): matplotlib's per-axes cost (about a second a picture)
would make the report, not the decoding, the bulk of an evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from ..data.images import load_image  # noqa: E402
from ..errors import ImageError  # noqa: E402
from ..fileio import atomic_write  # noqa: E402

PANEL = 160           # side of one panel of an attention map, in pixels
LABEL = 22            # height of the word under it
COLUMNS = 6
_JET = (colormaps["jet"](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.float32)   # (256, 3)


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
                   out: Path, columns: int = 4, wrong: Sequence[Sequence[str]] | None = None) -> Path:
    """A grid of pictures with the model's caption (bold) and one reference under each; where
    `wrong` gives a picture's hallucinated objects (CHAIR), a red line names them under its caption."""
    rows = math.ceil(len(paths) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.1 * columns, 4.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    wrong = [*(wrong or []), *[()] * (len(paths) - len(wrong or []))]
    for ax, path, caption, reference, absent in zip(axes.flat, paths, captions, references, wrong):
        try:
            ax.imshow(load_image(path))
        except ImageError:
            continue
        wrapped = _wrap(caption, 30)      # bold 9 pt: 34 characters ran into the next column
        ax.text(0, -0.03, wrapped, transform=ax.transAxes, fontsize=9, fontweight="bold", va="top")
        below = -0.05 - 0.075 * (wrapped.count("\n") + 1)
        if absent:
            ax.text(0, below, "not in the picture: " + ", ".join(absent), transform=ax.transAxes, fontsize=8,
                    fontweight="bold", va="top", color="#c0392b")
            below -= 0.075
        ax.text(0, below, "ref: " + _wrap(reference, 38), transform=ax.transAxes, fontsize=7.5, va="top", color="#555")
    fig.subplots_adjust(hspace=0.55, wspace=0.08)
    _save_figure(fig, out)
    return out


def attention_image(image: Image.Image, words: Sequence[str], weights: Sequence[Sequence[float]],
                    grid_side: int) -> Image.Image:
    """One picture with each word's attention as a heat map over it, the word beneath, at most
    COLUMNS panels a row: a single RGB image."""
    panels = list(zip(words, weights))
    columns = max(1, min(COLUMNS, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    sheet = Image.new("RGB", (columns * PANEL, rows * (PANEL + LABEL)), "white")
    base = np.asarray(image.convert("RGB").resize((PANEL, PANEL), Image.BILINEAR), dtype=np.float32)
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default()
    for n, (word, alpha) in enumerate(panels):
        grid = np.asarray(alpha, dtype=np.float32).reshape(grid_side, grid_side)
        level = Image.fromarray((grid / max(float(grid.max()), 1e-8) * 255).astype(np.uint8))
        heat = _JET[np.asarray(level.resize((PANEL, PANEL), Image.BILINEAR))]          # (P, P, 3)
        blended = (0.55 * base + 0.45 * heat).clip(0, 255).astype(np.uint8)
        x, y = (n % columns) * PANEL, (n // columns) * (PANEL + LABEL)
        sheet.paste(Image.fromarray(blended), (x, y))
        draw.text((x + PANEL // 2, y + PANEL + LABEL // 2), word, fill="black", font=font, anchor="mm")
    return sheet


def attention_figure(image_source, hypothesis, grid_side: int, out: Path) -> tuple[Path, int]:
    """`attention_image` of a hypothesis (its caption's words and their weights) as a PNG file;
    returns the file and the number of panels drawn."""
    image = image_source if isinstance(image_source, Image.Image) else load_image(image_source)
    words, weights = hypothesis.caption.split(), hypothesis.attention or []
    sheet = attention_image(image, words, weights, grid_side)
    atomic_write(out, lambda f: sheet.save(f, format="PNG", optimize=True))
    return out, min(len(words), len(weights))


def thumbnail(path: Path, out: Path, side: int = 160) -> bool:
    """A small JPEG of the picture; False when it cannot be read."""
    try:
        image = load_image(path)
    except ImageError:
        return False
    image.thumbnail((side, side))
    atomic_write(out, lambda f: image.save(f, format="JPEG", quality=85))
    return True
