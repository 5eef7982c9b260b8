"""`showtell evaluate`: decode a split with a trained run, score it like the papers, write the report."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .api import ArgumentError, Captioner
from .coco_results import check_output_file, record_image_id, write_json, write_results
from .data.batching import CaptionTable, ImageSet
from .data.features import FeatureCache
from .data.formats import load_dataset
from .errors import DataError
from .evaluate import caption_images, teacher_forced_nll
from .metrics import METRICS, human_bound, perplexity, ptb_tokenize, score_tokenised
from .modelcard import write_model_card
from .progress import progress_bar
from .report import attention_figure, write_report
from .run import Run

log = logging.getLogger("showtell")


def evaluate_run(run_dir: str | Path, data: list[str], images_dir: str | None, split: str = "test",
                 beam_size: int | None = None, ensemble: list[str] = (), device: str = "cpu",
                 features_dir: str | None = None, max_images: int | None = None, batch_size: int = 32,
                 write_html: bool = True, show_progress: bool = True, metrics=METRICS,
                 objects: str | None = None, results_file: str | Path | None = None) -> dict:
    """Decode a split and score it. `objects` (a COCO instances_*.json) adds CHAIR object
    hallucination; on the built-in scenes it is added from the shapes drawn, without asking.
    The scores and captions are kept in RUN/evaluations/<split>-<decoding>.json; `results_file`
    also gets the captions as a COCO results file (the dataset's own image ids)."""
    if results_file is not None:
        check_output_file(results_file, "--results")
    for name, value in (("beam_size", beam_size), ("max_images", max_images)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ArgumentError(f"{name}: expected 1 or more, got {value!r}")
    run = Run(run_dir)
    captioner = Captioner.load([run_dir, *ensemble], device=device, backend="torch")  # perplexity needs the PyTorch model
    config = captioner.config
    beam = beam_size or config.decode.beam_size
    model = captioner.models[0]
    attention = captioner.has_attention
    if features_dir:  # decode from the feature cache: no picture is read or encoded
        if ensemble:
            raise DataError("--features: decoding from a feature cache takes one run, not an ensemble")
        cache = FeatureCache.open(features_dir)
        records = [r for r in cache.records() if r.split == split][:max_images]
        images = cache.split_set(records, split)
    else:
        if not data:  # default: the data the run was trained on
            sources = run.sources() if (run.path / "data.json").exists() else {}
            data, images_dir = sources.get("data") or [], images_dir or sources.get("images")
            if not data:
                raise DataError("--data: give the annotation file to evaluate on")
        records = [r for r in load_dataset(data, images_dir, config.data) if r.split == split][:max_images]
        images = ImageSet(records, model.transform, config.data.max_image_pixels)
    if not records:
        raise DataError(f"no images in the '{split}' split")

    with progress_bar(total=len(records), desc=f"captioning {split}", unit="img", disable=not show_progress) as bar:
        if features_dir:
            results = caption_images(model, images, captioner.device, beam, config.decode.max_length,
                                     config.decode.length_penalty, config.decode.block_unk, n_best=beam,
                                     batch_size=batch_size, vocab=captioner.vocab, return_attention=attention,
                                     progress=bar.update)
        else:
            results = []
            for start in range(0, len(records), batch_size):
                chunk = records[start:start + batch_size]
                results += captioner.caption([str(r.path) for r in chunk], beam_size=beam, n_best=beam,
                                             batch_size=batch_size, return_attention=attention)
                bar.update(len(chunk))
    ok = [i for i, r in enumerate(results) if r.error is None]
    for r in results:
        if r.error:
            log.warning("skipped %s", r.error)
    if not ok:
        raise DataError(f"none of the {len(records)} '{split}' images could be read")

    # coco-caption scores (PTB tokeniser, pycocoevalcap scorers, CIDEr-D)
    keys = [str(i) for i in ok]
    both = {f"r{i}": list(records[i].captions) for i in ok}
    both.update({f"c{i}": [results[i].caption] for i in ok})
    tokenised = ptb_tokenize(both)
    gts = {k: tokenised[f"r{k}"] for k in keys}
    res = {k: tokenised[f"c{k}"] for k in keys}
    scores, per_image = score_tokenised(gts, res, metrics)
    human = human_bound({k: [r for r in records[int(k)].captions] for k in keys},
                        [m for m in ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr") if m in metrics])

    # perplexity under the (first) model, teacher forcing
    table = CaptionTable(records, captioner.vocab, config.data.max_caption_length)
    nll, words = teacher_forced_nll(model, images, table, captioner.device, precision=config.train.precision, indices=ok)
    ppl = perplexity(nll / max(words, 1))

    distinct = len({results[i].caption for i in ok})
    summary = {**scores, "perplexity": ppl, "n_images": len(ok), "n_failed": len(records) - len(ok),
               "distinct_captions": distinct, "beam_size": beam, "split": split}
    hallucination = object_hallucination(records, results, ok, data, objects)
    if hallucination:
        summary.update({k: hallucination[k] for k in ("CHAIR_i", "CHAIR_s", "object_recall")})
        summary["chair_captions"] = hallucination["captions"]
    report_path = None
    if write_html:
        items = []
        attention_dir = run.path / "report_files"
        for n, (record, result) in enumerate(zip(records, results)):
            item = {"path": str(record.path), "caption": result.caption, "references": record.captions,
                    "alternatives": [(h.caption, h.score) for h in result.hypotheses],
                    "cider": per_image.get("CIDEr", {}).get(str(n)), "error": result.error}
            if attention and result.hypotheses and result.hypotheses[0].attention and n < 200:
                name = f"attention{n:05d}.png"
                attention_figure(record.path, result.hypotheses[0], captioner.grid_side, attention_dir / name)
                item["attention_png"] = name
            if hallucination and hallucination["hallucinated"].get(str(n)):
                from .chair import marked_words

                item["hallucinated"] = hallucination["hallucinated"][str(n)]
                item["marked_words"] = marked_words(result.caption, item["hallucinated"], hallucination["words"])
            items.append(item)
        title = f"{run.path.name}: {split} split, " + ("greedy" if beam == 1 else f"beam {beam}")
        report_path = write_report(run.path, title, scores, human, items, run.history(),
                                   {"images": len(ok), "perplexity": f"{ppl:.3f}",
                                    "distinct captions": f"{distinct} of {len(ok)}",
                                    "models": ", ".join([str(run_dir), *ensemble]),
                                    **({"object hallucination (CHAIR_i / CHAIR_s / recall)":
                                        f"{summary['CHAIR_i']:.3f} / {summary['CHAIR_s']:.3f} / {summary['object_recall']:.3f}"}
                                       if hallucination else {})})
    decoding = decoding_name(beam, len(ensemble)) + (f"-first{max_images}" if max_images else "")
    ids = [record_image_id(records[i]) for i in ok]
    evaluation = {"split": split, "decoding": decoding, "beam_size": beam, "max_images": max_images,
                  "models": [str(run_dir), *map(str, ensemble)], "data": list(data or [features_dir]),
                  "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "scores": {k: v for k, v in summary.items() if k != "chair_captions"}, "human": human,
                  "predictions": [{"image_id": image_id, "file": records[i].path.name, "caption": results[i].caption,
                                   "references": list(records[i].captions)} for image_id, i in zip(ids, ok)]}
    if results_file is not None:
        write_results(results_file, ((image_id, results[i].caption) for image_id, i in zip(ids, ok)))
    evaluation_path = None
    try:
        (run.path / "evaluations").mkdir(exist_ok=True)
        evaluation_path = write_json(run.path / "evaluations" / f"{split}-{decoding}.json", evaluation)
        write_model_card(run.path)   # the card shows every kept evaluation
    except OSError as error:   # a read-only or shared run: the scores are still printed
        log.warning("could not keep the evaluation in %s (%s)", run.path, error.strerror or error)
    return {"scores": summary, "human": human, "report_path": report_path, "results": results, "records": records,
            "per_image": per_image, "evaluation_path": evaluation_path}


def decoding_name(beam: int, extra_models: int = 0) -> str:
    """'greedy', 'beam3', ... ('-ensemble3' added for three models averaged): the evaluation's file name."""
    return ("greedy" if beam == 1 else f"beam{beam}") + (f"-ensemble{extra_models + 1}" if extra_models else "")




def object_hallucination(records, results, ok, data, objects: str | None) -> dict | None:
    """CHAIR of the best captions, where the pictures' objects are known (see chair.py)."""
    from .chair import COCO_SYNONYMS, SYNTH_SYNONYMS, ObjectWords, chair, coco_objects, synth_objects

    if objects:
        words = ObjectWords(COCO_SYNONYMS)
        truth = coco_objects(objects, {records[i].path.name: records[i].captions for i in ok}, words)
    else:
        truth, words = {}, ObjectWords(SYNTH_SYNONYMS)
        for spec in data or []:
            truth.update(synth_objects(spec.rpartition("=")[2] if spec.partition("=")[0] in ("train", "val", "test")
                                       else spec))
    if not truth:
        return None
    keyed = {str(i): truth[records[i].path.name] for i in ok if records[i].path.name in truth}
    if objects and not keyed:
        raise DataError(f"--objects {objects}: none of the split's pictures is in it (matched by file name)")
    return chair({str(i): results[i].caption for i in ok}, keyed, words)


def format_table(report: dict) -> str:
    scores, human = report["scores"], report["human"]
    lines = [f"{'metric':<10} {'model':>8} {'human':>8} {'ratio':>6}"]
    for name in METRICS:
        if name not in scores:
            continue
        h = human.get(name)
        ratio = f"{scores[name] / h:6.2f}" if h else ""
        lines.append(f"{name:<10} {scores[name]:8.4f} {h if h is not None else float('nan'):8.4f} {ratio}"
                     if h is not None else f"{name:<10} {scores[name]:8.4f}")
    lines.append(f"{'perplexity':<10} {scores['perplexity']:8.3f}")
    if "CHAIR_i" in scores:
        lines.append(f"{'CHAIR_i':<10} {scores['CHAIR_i']:8.4f}   hallucinated objects / objects named")
        lines.append(f"{'CHAIR_s':<10} {scores['CHAIR_s']:8.4f}   captions naming an object not in the picture")
        lines.append(f"{'recall':<10} {scores['object_recall']:8.4f}   objects in the pictures that captions name")
    lines.append(f"{scores['n_images']} {scores['split']} images, beam {scores['beam_size']}, "
                 f"{scores['distinct_captions']} distinct captions" +
                 (f", {scores['n_failed']} unreadable" if scores["n_failed"] else ""))
    return "\n".join(lines)
