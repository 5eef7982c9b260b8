"""`showtell evaluate`: decode a split with a trained run, score it like the papers, keep the results.

Four stages, each a function: `load_split` (the run, the pictures or cached features of the
split), `decode_split` (captions, and the teacher-forced log-probabilities of the references from
the same features), `score_split` (coco-caption metrics, the human bound, perplexity, CHAIR) and
`write_outputs` (report.html, RUN/evaluations/<split>-<decoding>.json, a COCO results file, the
model card). The scores are complete before anything is written, and a file that cannot be
written is a warning naming it: the caller still gets (and prints) every score.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.coco_results import check_output_file, record_image_id, write_results
from ..data.features import FeatureCache
from ..data.formats import ImageRecord, load_dataset, parse_data_spec
from ..decoding.captions import CaptionResult, result_from
from ..decoding.options import PYTHON, DecodeOptions, Spelling, decoding_label, whole_number
from ..device import check_threads, ensure_threads
from ..errors import DataError, RunError, ShowtellError
from ..fileio import shown_in, write_json
from ..inference.captioner import Captioner
from ..inference.torch_runtime import TorchRuntime
from ..progress import progress_bar
from ..reporting.modelcard import write_model_card
from ..run import Run
from .metrics import METRICS, human_bound, perplexity, score_captions
from .report import report_items, write_report

log = logging.getLogger("showtell")
HUMAN_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")


@dataclass
class Split:
    """The pictures of one split and where they come from: files, or a feature cache."""
    name: str
    records: list[ImageRecord]
    data: list[str]                       # the --data values (or the cache folder) for the record
    cache: FeatureCache | None = None


@dataclass
class Decoded:
    """What decoding a split gave: a result per record, and the references' log-probabilities."""
    results: list[CaptionResult]
    reference_logprob: float = 0.0        # summed over every reference word of the readable pictures
    reference_words: int = 0              # those words, <end> included

    @property
    def readable(self) -> list[int]:
        return [i for i, r in enumerate(self.results) if r.error is None]


@dataclass
class Scored:
    summary: dict
    human: dict
    per_image: dict
    hallucination: dict | None = None
    extra: dict = field(default_factory=dict)


def evaluate_run(run_dir: str | Path, data: list[str], images_dir: str | None, split: str = "test",
                 beam_size: int | None = None, ensemble: list[str] = (), device: str = "cpu",
                 features_dir: str | None = None, max_images: int | None = None, batch_size: int = 32,
                 write_html: bool = True, show_progress: bool = True, metrics=METRICS,
                 objects: str | None = None, results_file: str | Path | None = None, spelling: Spelling = PYTHON) -> dict:
    """Decode a split and score it (the module docstring has the stages). `objects` (a COCO
    instances_*.json) adds CHAIR object hallucination; on the built-in scenes it is added from the
    shapes drawn, without asking. `results_file` also gets the captions as a COCO results file.
    Each run is opened once, here, and passed down (to the output check, the runtime, the stages).
    Messages name the arguments as `spelling` does (`--beam-size` for the CLI)."""
    run, others = Run(run_dir), [Run(path) for path in ensemble]
    if results_file is not None:
        check_output_file(results_file, spelling.name("results_file"), runs=[run, *others])
    whole_number(max_images, spelling.name("max_images"), allow_none=True)
    ensure_threads()   # as Captioner.load does, for a caller from Python (the CLI has configured it)
    captioner = Captioner(TorchRuntime.load([run, *others], device, spelling.name("device")))
    beam = whole_number(beam_size, spelling.name("beam_size"), allow_none=True) or captioner.config.decode.beam_size
    options = captioner.options(spelling, beam_size=beam, n_best=beam, return_attention=captioner.has_attention)
    chosen = load_split(run, captioner, data, images_dir, split, features_dir, bool(ensemble), max_images)
    decoded = decode_split(captioner, chosen, options, batch_size, show_progress)
    scored = score_split(chosen, decoded, metrics, objects, beam)
    models = [str(run_dir), *map(str, ensemble)]
    paths = write_outputs(run, captioner, chosen, decoded, scored, options, models, max_images, write_html,
                          results_file)
    hallucinated = scored.hallucination["hallucinated"] if scored.hallucination else {}
    return {"scores": scored.summary, "human": scored.human, "results": decoded.results, "records": chosen.records,
            "per_image": scored.per_image, "hallucinated": hallucinated, **paths}


# --- load ------------------------------------------------------------------------------------------------
def load_split(run: Run, captioner: Captioner, data: list[str], images_dir: str | None, split: str,
               features_dir: str | None, ensemble: bool, max_images: int | None) -> Split:
    """The split's records, from a feature cache or the annotation files (the run's own by default)."""
    if features_dir:  # decode from the feature cache: no picture is read or encoded
        if ensemble:
            raise DataError("--features: decoding from a feature cache takes one run, not an ensemble")
        cache = FeatureCache.open(features_dir)
        records = [r for r in cache.records() if r.split == split][:max_images]
        chosen = Split(split, records, [str(features_dir)], cache)
    else:
        if not data:
            sources = run.sources() if run.has_sources() else {}
            data, images_dir = sources.get("data") or [], images_dir or sources.get("images")
            if not data:
                raise DataError("--data: give the annotation file to evaluate on")
        records = [r for r in load_dataset(data, images_dir, captioner.config.data) if r.split == split][:max_images]
        chosen = Split(split, records, list(data))
    if not chosen.records:
        raise DataError(f"no images in the '{split}' split")
    return chosen


# --- decode ----------------------------------------------------------------------------------------------
def _batches(captioner: Captioner, chosen: Split, batch_size: int):
    """(indices, features of the readable ones, errors by index) per batch of the split."""
    records = chosen.records
    cached = chosen.cache.split_set(records) if chosen.cache is not None else None
    for start in range(0, len(records), batch_size):
        ids = list(range(start, min(start + batch_size, len(records))))
        if cached is not None:
            rows = cached.__getitems__(ids)
            features = {k: torch.stack([row[1][k] for row in rows]).to(captioner.device).float() for k in rows[0][1]}
            yield ids, [features], {}
            continue
        prepared, errors = captioner.load_images([str(records[i].path) for i in ids])
        good = [p for p in prepared if p is not None]
        bad = {i: str(e) for i, e in zip(ids, errors) if e is not None}
        yield [i for i in ids if i not in bad], captioner.encode(good) if good else None, bad


def decode_split(captioner: Captioner, chosen: Split, options: DecodeOptions, batch_size: int = 32,
                 show_progress: bool = True) -> Decoded:
    """Every record's captions, and from the same features the log-probability of its references
    (cut to data.max_caption_length words, as training reads them) for the perplexity."""
    vocab, cut = captioner.vocab, captioner.config.data.max_caption_length
    out: dict[int, CaptionResult] = {}
    decoded = Decoded([])
    grid = captioner.grid_side if options.return_attention else None
    with progress_bar(total=len(chosen.records), desc=f"captioning {chosen.name}", unit="img",
                      disable=not show_progress) as bar:
        for ids, features, bad in _batches(captioner, chosen, batch_size):
            check_threads()   # the loop that owns the long work follows the thread policy (device.py)
            for i, message in bad.items():
                out[i] = CaptionResult(str(chosen.records[i].path), error=message)
            if features is not None:
                for i, hyps in zip(ids, captioner.decode(features, options)):
                    out[i] = result_from(str(chosen.records[i].path), hyps, grid)
                rows = [row for row, i in enumerate(ids) for _ in chosen.records[i].tokens]
                targets = [vocab.ids_of(tokens[:cut]) for i in ids for tokens in chosen.records[i].tokens]
                for logprobs in captioner.score(features, rows, targets):
                    decoded.reference_logprob += sum(logprobs)
                    decoded.reference_words += len(logprobs)
            bar.update(len(ids) + len(bad))
    decoded.results = [out[i] for i in range(len(chosen.records))]
    for result in decoded.results:
        if result.error:
            log.warning("skipped %s", shown_in(result.error, result.source))
    if not decoded.readable:
        raise DataError(f"none of the {len(chosen.records)} '{chosen.name}' images could be read")
    return decoded


# --- score -----------------------------------------------------------------------------------------------
def score_split(chosen: Split, decoded: Decoded, metrics, objects: str | None, beam: int) -> Scored:
    """coco-caption scores (PTB tokenizer, pycocoevalcap scorers, CIDEr-D), the human bound,
    perplexity, distinct captions and, where the pictures' objects are known, CHAIR."""
    ok, records, results = decoded.readable, chosen.records, decoded.results
    keys = [str(i) for i in ok]
    scores, per_image = score_captions({k: records[int(k)].captions for k in keys},
                                       {k: results[int(k)].caption for k in keys}, metrics)
    human = human_bound({k: records[int(k)].captions for k in keys}, [m for m in HUMAN_METRICS if m in metrics])
    ppl = perplexity(-decoded.reference_logprob / max(decoded.reference_words, 1))
    summary = {**scores, "perplexity": ppl, "n_images": len(ok), "n_failed": len(records) - len(ok),
               "distinct_captions": len({results[i].caption for i in ok}), "beam_size": beam, "split": chosen.name}
    hallucination = object_hallucination(records, results, ok, chosen.data if chosen.cache is None else [], objects)
    if hallucination:
        summary.update({k: hallucination[k] for k in ("CHAIR_i", "CHAIR_s", "object_recall")})
        summary["chair_captions"] = hallucination["captions"]
    return Scored(summary, human, per_image, hallucination)


def object_hallucination(records, results, ok, data, objects: str | None) -> dict | None:
    """CHAIR of the best captions, where the pictures' objects are known (see chair.py)."""
    from .chair import COCO_SYNONYMS, SYNTH_SYNONYMS, ObjectWords, chair, coco_objects, synth_objects

    if objects:
        words = ObjectWords(COCO_SYNONYMS)
        truth = coco_objects(objects, {records[i].path.name: records[i].captions for i in ok}, words)
    else:
        truth, words = {}, ObjectWords(SYNTH_SYNONYMS)
        for spec in data or []:
            truth.update(synth_objects(parse_data_spec(spec)[1]))
    if not truth:
        return None
    keyed = {str(i): truth[records[i].path.name] for i in ok if records[i].path.name in truth}
    if objects and not keyed:
        raise DataError(f"--objects {objects}: none of the split's pictures is in it (matched by file name)")
    return chair({str(i): results[i].caption for i in ok}, keyed, words)


# --- write -----------------------------------------------------------------------------------------------
def decoding_name(beam: int, extra_models: int = 0) -> str:
    """'greedy', 'beam3', ... ('-ensemble3' added for three models averaged): the evaluation's file name."""
    return decoding_label(beam).replace(" ", "") + (f"-ensemble{extra_models + 1}" if extra_models else "")


def _kept(what: str, path: Path, write):
    """`write()`, or a warning naming `path` when the system refuses (read-only run, full disk)."""
    try:
        return write()
    except OSError as error:
        log.warning("could not write %s %s (%s); the scores are still reported", what, path, error.strerror or error)
    except ShowtellError as error:
        log.warning("could not write %s: %s", what, error)
    return None


def write_outputs(run: Run, captioner: Captioner, chosen: Split, decoded: Decoded, scored: Scored,
                  options: DecodeOptions, models: list[str], max_images: int | None, write_html: bool,
                  results_file) -> dict:
    """The COCO results file, and in the run (holding its lock) report.html, the kept evaluation and
    the model card; returns their paths (None for each one not written). A run another process
    holds (training) gets none of its files: a warning says so."""
    ids = [record_image_id(chosen.records[i]) for i in decoded.readable]
    paths = {"report_path": None, "evaluation_path": None, "results_path": None}
    if results_file is not None:
        pairs = [(image_id, decoded.results[i].caption) for image_id, i in zip(ids, decoded.readable)]
        paths["results_path"] = _kept("the COCO results file", Path(results_file), lambda: write_results(results_file, pairs))
    try:
        with run.locked("evaluate"):
            paths.update(_write_in_run(run, captioner, chosen, decoded, scored, options, models, max_images,
                                       write_html, ids))
    except RunError as error:
        log.warning("%s; the scores are still reported, but no report or evaluation was kept", error)
    except OSError as error:
        log.warning("could not write in %s (%s); the scores are still reported", run.path, error.strerror or error)
    return paths


def _write_in_run(run: Run, captioner: Captioner, chosen: Split, decoded: Decoded, scored: Scored,
                  options: DecodeOptions, models: list[str], max_images: int | None, write_html: bool, ids) -> dict:
    ok, records, results, summary = decoded.readable, chosen.records, decoded.results, scored.summary
    decoding = decoding_name(options.beam_size, len(models) - 1) + (f"-first{max_images}" if max_images else "")
    report_path = None
    if write_html:
        title = f"{run.path.name}: {chosen.name} split, " + decoding_label(options.beam_size)
        facts = {"images": len(ok), "perplexity": f"{summary['perplexity']:.3f}",
                 "distinct captions": f"{summary['distinct_captions']} of {len(ok)}", "models": ", ".join(models)}
        if scored.hallucination:
            facts["object hallucination (CHAIR_i / CHAIR_s / recall)"] = (
                f"{summary['CHAIR_i']:.3f} / {summary['CHAIR_s']:.3f} / {summary['object_recall']:.3f}")
        items = report_items(records, results, scored.per_image.get("CIDEr", {}), scored.hallucination)
        report_path = _kept("the report", run.report, lambda: write_report(
            run, title, {m: summary[m] for m in METRICS if m in summary}, scored.human, items, run.history(),
            facts, captioner.grid_side))
    evaluation = {"split": chosen.name, "decoding": decoding, "beam_size": options.beam_size, "max_images": max_images,
                  "models": models, "data": chosen.data, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "scores": {k: v for k, v in summary.items() if k != "chair_captions"}, "human": scored.human,
                  "predictions": [{"image_id": image_id, "file": records[i].path.name, "caption": results[i].caption,
                                   "references": list(records[i].captions)} for image_id, i in zip(ids, ok)]}
    kept = run.evaluation_file(chosen.name, decoding)
    evaluation_path = _kept("the evaluation", kept, lambda: write_json(kept, evaluation))
    if evaluation_path is not None:
        _kept("the model card", run.card, lambda: write_model_card(run))  # it shows every kept evaluation
    return {"report_path": report_path, "evaluation_path": evaluation_path}


def format_table(report: dict) -> str:
    scores, human = report["scores"], report["human"]
    lines = [f"{'metric':<10} {'model':>8} {'human':>8} {'ratio':>6}"]
    for name in METRICS:
        if name not in scores:
            continue
        h = human.get(name)
        ratio = f"{scores[name] / h:6.2f}" if h else ""
        lines.append(f"{name:<10} {scores[name]:8.4f} {h:8.4f} {ratio}" if h is not None else f"{name:<10} {scores[name]:8.4f}")
    lines.append(f"{'perplexity':<10} {scores['perplexity']:8.3f}")
    if "CHAIR_i" in scores:
        lines.append(f"{'CHAIR_i':<10} {scores['CHAIR_i']:8.4f}   hallucinated objects / objects named")
        lines.append(f"{'CHAIR_s':<10} {scores['CHAIR_s']:8.4f}   captions naming an object not in the picture")
        lines.append(f"{'recall':<10} {scores['object_recall']:8.4f}   objects in the pictures that captions name")
    lines.append(f"{scores['n_images']} {scores['split']} images, beam {scores['beam_size']}, "
                 f"{scores['distinct_captions']} distinct captions" +
                 (f", {scores['n_failed']} unreadable" if scores["n_failed"] else ""))
    return "\n".join(lines)
