"""The model card: RUN/README.md, what a stranger needs to know to use a run.

It opens with a metadata block in the Hugging Face model-card format (YAML between `---` lines:
library, tags, datasets, metrics and a `model-index` of the scores), then says what the model is,
what it was trained on and how, how well it does next to the human bound, a few of its captions,
how to load it, and what it cannot do. Everything comes from the run's own files, read through
`Run` (config.json, vocab.json, data.json, training.json, history.jsonl, evaluations/*.json and
the header of model.safetensors), so the card can be rewritten at any time: training writes it at
its end and every `evaluate` rewrites it with its scores. `export` copies it.
"""

from __future__ import annotations

import html
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..architectures import card_decoder
from ..data.formats import parse_data_spec
from ..decoding.options import decoding_label
from ..errors import RunError
from ..fileio import atomic_write_text
from ..run import CONFIG, DATA, HISTORY, MODEL, TRAINING, VOCAB, Run

SCORE_NAMES = ("Bleu_1", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
# object hallucination (evaluation/chair.py): no human bound; CHAIR lower is better, recall higher
OBJECT_NAMES = {"CHAIR_s": "CHAIR_s (captions naming an absent object)",
                "CHAIR_i": "CHAIR_i (objects named that are absent)", "object_recall": "object recall"}
HF_METRIC = {"Bleu_1": "bleu", "Bleu_4": "bleu", "METEOR": "meteor", "ROUGE_L": "rouge", "CIDEr": "cider",
             "SPICE": "spice"}


def markdown_text(value) -> str:
    """Anything from the run's files (file names, captions, references, paths, split names) as
    Markdown that shows it as it is: hubs render a card's HTML, so &, < and > become entities; a |
    would end a table cell and a line break a table row, so | is escaped and line breaks are spaces;
    Markdown's own marks (` * _ [ ] ! and \\) are escaped too, so no name opens a code span or
    becomes a link or an image that the hub would fetch."""
    escaped = html.escape(str(value), quote=False)
    escaped = "".join("\\" + c if c in MARKDOWN_MARKS else c for c in escaped)
    return " ".join(escaped.splitlines())


MARKDOWN_MARKS = set("\\`*_[]!|")


def _code(value) -> str:
    """A setting as a code span (which shows HTML and Markdown as text), or as escaped text when a
    backtick or a line break in it would end the span."""
    text = str(value)
    return markdown_text(text) if any(c in text for c in "`\r\n") else f"`{text}`"


def _history(run: Run) -> list[dict]:
    try:
        return run.history()
    except RunError:
        return []


def parameter_count(weights: Path) -> int | None:
    """Number of parameters in a safetensors file, from its header alone."""
    try:
        with weights.open("rb") as f:
            size = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return None
    return sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")


def record_training(run: Run | str | Path, summary: dict, seconds: float) -> None:
    """Add one training session (train, or a resume) to RUN/training.json: time adds up."""
    run = Run.of(run)
    before = run.loose_json(TRAINING, {}) or {}
    keep = ("epochs", "steps", "best_epoch", "best_metric", "train_images", "val_images", "vocab_size",
            "stopped_early", "skipped_images")
    info = {**before, **{k: summary[k] for k in keep if k in summary},
            "seconds": round(float(before.get("seconds", 0.0)) + seconds, 1),
            "sessions": int(before.get("sessions", 0)) + 1}
    run.write_training_record(info)


def evaluations(run: Run) -> list[dict]:
    """The run's kept evaluations of this model alone on a whole split, oldest first (an ensemble's
    scores, or those of the first N pictures, are not this model's and stay out of its card)."""
    found = run.kept_evaluations()
    return sorted((e for e in found if isinstance(e, dict) and "scores" in e and len(e.get("models", [])) <= 1
                   and not e.get("max_images")), key=lambda e: e.get("date", ""))


def _dataset_names(sources: dict) -> list[str]:
    names = []
    for spec in sources.get("data") or []:
        name = Path(parse_data_spec(spec)[1]).name
        if name not in names:
            names.append(name)
    if not names and sources.get("features"):
        names.append(Path(sources["features"]).name)
    return names


def _label(evaluation: dict) -> str:
    return decoding_label(evaluation.get("beam_size", 1))


def metadata(run: Path, config: dict, sources: dict, evals: list[dict], history: list[dict]) -> dict:
    model = config.get("model", {})
    datasets = _dataset_names(sources)
    results = []
    for e in evals:
        metrics = [{"type": HF_METRIC[m], "name": f"{m} ({_label(e)})", "value": round(float(e["scores"][m]), 4)}
                   for m in SCORE_NAMES if m in e["scores"]]
        if metrics:
            results.append({"task": {"type": "image-to-text", "name": "Image captioning"},
                            "dataset": {"name": ", ".join(Path(d).name for d in e.get("data", [])) or "unknown",
                                        "type": "image-captioning", "split": e.get("split", "test")},
                            "metrics": metrics})
    best = _best_validation(history)
    if best is not None and not results:
        metrics = [{"type": HF_METRIC[m], "name": f"{m} (validation, "
                    f"{'greedy' if config.get('train', {}).get('val_beam_size', 1) == 1 else 'beam'})",
                    "value": round(float(best[f"val_{m}"]), 4)} for m in ("Bleu_4", "CIDEr") if f"val_{m}" in best]
        if metrics:
            results.append({"task": {"type": "image-to-text", "name": "Image captioning"},
                            "dataset": {"name": ", ".join(datasets) or "unknown", "type": "image-captioning",
                                        "split": "validation"}, "metrics": metrics})
    tags = ["image-captioning", "image-to-text", "show-and-tell", "pytorch",
            card_decoder(model).card_tag, f"encoder-{model.get('encoder')}"]
    card = {"library_name": "showtell", "pipeline_tag": "image-to-text", "tags": tags,
            "datasets": datasets or ["unknown"], "metrics": ["bleu", "meteor", "rouge", "cider"],
            "model-index": [{"name": run.name, "results": results}]}
    return card


def _best_validation(history: list[dict]) -> dict | None:
    best = [r for r in history if r.get("best") and "val_loss" in r]
    return best[-1] if best else None


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{seconds:.0f} s" if seconds < 120 else f"{minutes:.1f} minutes" if minutes < 120 else f"{minutes / 60:.1f} hours"


@dataclass
class RunFiles:
    """What a card is made from: the run's own files, each read tolerantly (a missing one is empty)."""
    path: Path
    config: dict
    vocab: dict
    sources: dict
    training: dict
    history: list[dict]
    evals: list[dict]

    model_file: Path

    @classmethod
    def read(cls, run: Run) -> "RunFiles":
        return cls(run.path, run.loose_json(CONFIG, {}) or {}, run.loose_json(VOCAB, {}) or {},
                   run.loose_json(DATA, {}) or {}, run.loose_json(TRAINING, {}) or {}, _history(run), evaluations(run),
                   run.model_file)


def _model_section(f: RunFiles) -> list[str]:
    model, data = f.config.get("model", {}), f.config.get("data", {})
    params = parameter_count(f.model_file)
    vocab_size = len(f.vocab.get("words", [])) or f.training.get("vocab_size")
    language_model = f.vocab.get("language_model")     # a prefix-LM run tokenises with its LM's tokenizer
    if language_model:
        vocabulary = f"- Tokens: the tokenizer of the language model {_code(language_model)} ({vocab_size or '?'} tokens)"
    elif vocab_size:
        vocabulary = (f"- Vocabulary: {vocab_size} words (training words seen at least {data.get('min_word_count')} "
                      "times; others become `<unk>`, which is never generated)")
    else:
        vocabulary = "- Vocabulary: unknown"
    return ["## Model", "",
            f"- Encoder: {_code(model.get('encoder'))}, weights {_code(model.get('encoder_weights'))}"
            f"{', frozen' if model.get('freeze_encoder') else ', trained'}; pictures resized to "
            f"{data.get('image_size') or 'the encoder default'} px",
            f"- Decoder: {card_decoder(model).describe(model)}",
            f"- Parameters: {params:,}" if params is not None else f"- Parameters: unknown (no {MODEL})",
            vocabulary]


def _training_section(f: RunFiles) -> list[str]:
    sources, training, train = f.sources, f.training, f.config.get("train", {})
    lines = ["## Training data", "",
             f"- Annotations: {markdown_text(', '.join(sources.get('data') or []) or sources.get('features') or 'unknown')}"]
    if sources.get("images"):
        lines.append(f"- Images: {markdown_text(sources['images'])}")
    if training:
        lines.append(f"- Split sizes: {training.get('train_images', '?')} training and {training.get('val_images', '?')} "
                     "validation pictures" + "".join(f", {e['scores']['n_images']} {markdown_text(e['split'])} pictures evaluated"
                                                     for e in f.evals[-1:]))
    lines += ["", "## Training", ""]
    if training:
        lines.append(f"- {training.get('epochs')} epochs, {training.get('steps')} steps in "
                     f"{_duration(float(training.get('seconds', 0)))} ({training.get('sessions', 1)} session(s))"
                     + (", stopped early at the time budget" if training.get("stopped_early") else ""))
        if training.get("best_epoch") is not None:
            lines.append(f"- Best model: epoch {training['best_epoch']} by {training.get('best_metric')}")
        else:
            lines.append("- Not validated: training stopped before its first validation; the model is its last weights")
    lines.append(f"- Adam, learning rate {train.get('lr')} ({train.get('lr_schedule')}, {train.get('warmup_steps')} "
                 f"warm-up steps), batch {train.get('batch_size')} pictures x {train.get('captions_per_image')} captions, "
                 f"precision {train.get('precision')}, seed {train.get('seed')}"
                 + (f", then {train.get('scst_epochs')} self-critical epochs" if train.get("scst_epochs") else ""))
    lines.append(f"- Every setting: `{CONFIG}`; losses and validation scores per epoch: `{HISTORY}`")
    return lines


def _scores_section(f: RunFiles) -> list[str]:
    lines, best = ["## Scores", ""], _best_validation(f.history)
    if f.evals:
        lines += ["coco-caption metrics (PTB tokenizer, CIDEr-D); human: each reference scored against the others.", "",
                  "| split | decoding | pictures | metric | model | human | model / human |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for e in f.evals:
            for m in (m for m in SCORE_NAMES if m in e["scores"]):
                value, h = e["scores"][m], e.get("human", {}).get(m)
                human, ratio = ("" if h is None else f"{h:.4f}"), (f"{value / h:.2f}" if h else "")
                lines.append(f"| {markdown_text(e['split'])} | {_label(e)} | {e['scores'].get('n_images')} | {m} | "
                             f"{value:.4f} | {human} | {ratio} |")
            for m, name in OBJECT_NAMES.items():
                if isinstance(e["scores"].get(m), (int, float)):
                    lines.append(f"| {markdown_text(e['split'])} | {_label(e)} | {e['scores'].get('n_images')} | {name} | "
                                 f"{e['scores'][m]:.4f} |  |  |")
    elif best:
        lines.append(f"Validation (decoded captions, epoch {best['epoch']}): "
                     + ", ".join(f"{k[4:]} {_fmt(best[k])}" for k in ("val_Bleu_4", "val_CIDEr", "val_perplexity") if k in best)
                     + ". No test evaluation yet: run `showtell evaluate` to add one (with the human bound).")
    else:
        lines.append("Not evaluated yet: run `showtell evaluate`.")
    samples = _samples(f.evals, f.history)
    if samples:
        lines += ["", "## Sample captions", "", "| picture | model | a reference |", "| --- | --- | --- |"]
        lines += [f"| {markdown_text(s['file'])} | {markdown_text(s['caption'])} | {markdown_text(s['reference'])} |" for s in samples]
    return lines


def _usage_section(f: RunFiles) -> list[str]:
    folder = f.path.name
    return ["## How to use it", "", "```", "pip install showtell",
            f"showtell caption {folder} photo.jpg --beam-size {f.config.get('decode', {}).get('beam_size', 3)}",
            f"showtell serve {folder}        # HTTP service and web page on http://127.0.0.1:8000",
            f"showtell evaluate {folder} --data captions.json --results results.json", "```", "", "```python",
            "from showtell import Captioner", "", f'captioner = Captioner.load("{folder}", device="cpu")',
            'print(captioner.caption("photo.jpg").caption)', "```", "", "## Limitations", "", LIMITATIONS]


LIMITATIONS = ("A Show and Tell model describes pictures like the ones it was trained on, in the words of their "
               "captions, and nothing else: on other kinds of pictures it still writes a fluent sentence of its "
               "training vocabulary, often wrong. It names objects that are not there (see CHAIR in "
               "`showtell evaluate`), confuses colours, counts and left/right, and favours frequent phrases. "
               "Scores on the training data's own test split say little about other pictures. The captions are "
               "English only and carry the biases of the training captions.")


def build_card(run: Run | str | Path) -> str:
    """The model card of a run directory or exported package (or its opened `Run`), as text."""
    f = RunFiles.read(Run.of(run))
    head = yaml.safe_dump(metadata(f.path, f.config, f.sources, f.evals, f.history), sort_keys=False, allow_unicode=True)
    lines = ["---", head.rstrip("\n"), "---", "", f"# {markdown_text(f.path.name)}: a showtell image captioner", "",
             "Writes one English sentence describing a picture. Trained with showtell; this card is made from "
             "the files in this folder, written by `showtell train` at its end and rewritten by every "
             "`showtell evaluate`.", ""]
    for section in (_model_section, _training_section, _scores_section, _usage_section):
        lines += section(f) + [""]
    return "\n".join(lines)


def _samples(evals: list[dict], history: list[dict], n: int = 5) -> list[dict]:
    for e in reversed(evals):
        if e.get("predictions"):
            return [{"file": p.get("file", p.get("image_id")), "caption": p["caption"],
                     "reference": (p.get("references") or [""])[0]} for p in e["predictions"][:n]]
    for record in reversed(history):
        if record.get("val_samples"):
            return record["val_samples"][:n]
    return []


def write_model_card(run: Run | str | Path) -> Path:
    run = Run.of(run)
    atomic_write_text(run.card, build_card(run))
    return run.card
