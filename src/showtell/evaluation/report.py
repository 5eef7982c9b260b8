"""The evaluation report: RUN/report.html, with no external assets.

Every evaluated picture is a row: its caption and beam alternatives with their scores, its
references, its own CIDEr and any hallucinated objects, worst first (a button flips the order),
with plots of the training history on top. Pictures are bounded so that the report stays small
and quick at COCO's 5,000 pictures: thumbnails for the THUMBNAILS worst and best rows, attention
maps (reporting/figures.py) for the ATTENTION_MAPS worst and best; the rows between show text.
"""

from __future__ import annotations

import html
import shutil
from collections.abc import Sequence
from pathlib import Path

from ..fileio import atomic_write_text
from ..reporting.figures import attention_figure, history_plots, thumbnail
from ..run import REPORT_FILES, Run

THUMBNAILS = 100       # pictures shown as thumbnails: half the worst rows, half the best
ATTENTION_MAPS = 24    # pictures shown with attention maps: likewise


def report_items(records, results, cider: dict, hallucination: dict | None) -> list[dict]:
    """One dict per evaluated picture for `write_report`: path, caption, alternatives [(caption,
    score)], references, cider, error, and the attention of the best caption, hallucinated objects
    and the positions of their words (marked_words) where known."""
    from .chair import marked_words

    items = []
    for n, (record, result) in enumerate(zip(records, results)):
        best = result.hypotheses[0] if result.hypotheses else None
        item = {"path": str(record.path), "caption": result.caption, "references": record.captions,
                "alternatives": [(h.caption, h.score) for h in result.hypotheses], "cider": cider.get(str(n)),
                "error": result.error, "hypothesis": best if best is not None and best.attention else None}
        if hallucination and hallucination["hallucinated"].get(str(n)):
            item["hallucinated"] = hallucination["hallucinated"][str(n)]
            item["marked_words"] = marked_words(result.caption, item["hallucinated"], hallucination["words"])
        items.append(item)
    return items


def _ends(count: int, keep: int) -> set[int]:
    """Positions 0 .. count-1 of the `keep` // 2 first and the rest last (all when they fit)."""
    first = keep // 2
    return set(range(count)) if count <= keep else set(range(first)) | set(range(count - (keep - first), count))


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


def _row(item: dict, thumb: str | None, attention: str | None) -> str:
    alts = "".join(f"<li>{html.escape(c)} <span class=cider>({s:.3f})</span></li>" for c, s in item.get("alternatives", []))
    refs = "".join(f"<li>{html.escape(r)}</li>" for r in item.get("references", []))
    cider = f"CIDEr {item['cider']:.3f}" if item.get("cider") is not None else ""
    shown = f"<div><img src='{REPORT_FILES}/{attention}' style='max-width:960px'></div>" if attention else ""
    error = f"<div class=bad>{html.escape(item['error'])}</div>" if item.get("error") else ""
    image = f"<img class=thumb src='{REPORT_FILES}/{thumb}' alt=''>" if thumb else "<div class=thumb></div>"
    caption = _marked(item.get("caption", ""), item.get("marked_words", ()))
    if item.get("hallucinated"):
        error += f"<div class=bad>not in the picture: {html.escape(', '.join(item['hallucinated']))}</div>"
    return (f"<div class=item>{image}<div><div class=gen>{caption}</div>"
            f"<div class=cider>{html.escape(Path(item['path']).name)} · {cider}</div>{error}"
            f"<ol class=alts>{alts}</ol><ul class=refs>{refs}</ul>{shown}</div></div>")


def _score_table(scores: dict, human: dict) -> str:
    names = [m for m in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE") if m in scores]
    return "".join(
        f"<tr><td>{m}</td><td>{scores[m]:.4f}</td><td>{human[m]:.4f}</td><td>{scores[m] / human[m]:.2f}</td></tr>"
        if m in human and human[m] else f"<tr><td>{m}</td><td>{scores[m]:.4f}</td><td></td><td></td></tr>" for m in names)


def write_report(run: Run, title: str, scores: dict, human: dict, items: list[dict], history: Sequence[dict],
                 extra: dict | None = None, grid_side: int | None = None) -> Path:
    """The run's report.html from `report_items`, worst CIDEr first; the pictures of an earlier
    report go."""
    files = run.report_files
    shutil.rmtree(files, ignore_errors=True)
    files.mkdir(parents=True, exist_ok=True)
    plots = history_plots(history, files)
    ordered = sorted(items, key=lambda it: (it.get("cider") is None, it.get("cider") or 0.0))
    with_thumbs, with_maps = _ends(len(ordered), THUMBNAILS), _ends(len(ordered), ATTENTION_MAPS)
    rows = []
    for n, item in enumerate(ordered):
        thumb = f"thumb{n:05d}.jpg" if n in with_thumbs and thumbnail(Path(item["path"]), files / f"thumb{n:05d}.jpg") else None
        attention = None
        if n in with_maps and item.get("hypothesis") is not None and grid_side and not item.get("error"):
            attention = f"attention{n:05d}.png"
            attention_figure(item["path"], item["hypothesis"], grid_side, files / attention)
        rows.append(_row(item, thumb, attention))
    facts = "".join(f"<li>{html.escape(str(k))}: {html.escape(str(v))}</li>" for k, v in (extra or {}).items())
    plot_tags = "".join(f"<img src='{REPORT_FILES}/{p.name}' alt='{p.stem}'>" for p in plots)
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title><style>{_STYLE}</style>"
            f"<script>{_SCRIPT}</script></head><body><h1>{html.escape(title)}</h1><ul>{facts}</ul>"
            f"<table class=scores><tr><th>metric</th><th>model</th><th>human</th><th>model / human</th></tr>"
            f"{_score_table(scores, human)}</table><div class=plots>{plot_tags}</div><h2>Captions ({len(items)} images)</h2>"
            f"<button id=order onclick='flip()'>show best first</button><div id=items>{''.join(rows)}</div></body></html>")
    atomic_write_text(run.report, page)
    return run.report
