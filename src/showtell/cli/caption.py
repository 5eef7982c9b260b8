"""`showtell caption` and `showtell score`: pictures in, lines out.

File names are printed as `ls` prints them: a name that is not valid UTF-8 with its bytes escaped
(`caf\\xe9.png`), and one holding a tab, a line break or another control character (or starting
with a quote) as a JSON string, so every output line stays one line and no name stops the run
(`fileio.shown`). A CSV text cell that a spreadsheet would run as a formula gets a leading quote.
"""

from __future__ import annotations

import csv
import glob
import json
import logging
import sys
from pathlib import Path

from ..decoding.options import CLI
from ..errors import ShowtellError
from ..fileio import shown, shown_in
from ..progress import progress_bar

log = logging.getLogger("showtell")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def expand_images(items: list[str]) -> list[str]:
    """Files as given; folders and glob patterns expanded to the pictures in them, sorted."""
    out = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif not path.exists() and any(c in item for c in "*?["):
            matches = sorted(glob.glob(item, recursive=True))
            out += matches if matches else [item]
        else:
            out.append(item)
    return out


def attention_targets(out_dir: Path, files: list[str]) -> dict[str, Path]:
    """One map per picture, named after it; pictures with the same name in different folders get
    -2, -3... so that no map overwrites another."""
    targets, taken = {}, set()
    for source in files:
        if source in targets:
            continue
        stem, n = Path(source).stem, 1
        name = f"{stem}.png"
        while name in taken:
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        targets[source] = out_dir / name
    return targets


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_text(text: str) -> str:
    """A CSV text cell that a spreadsheet shows as text: one beginning with = + - @ (or a tab or a
    carriage return) would run as a formula, so it gets a leading ' (OWASP's CSV-injection rule)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


class Lines:
    """Writes results as the chosen format asks: tab-separated text, JSON lines or CSV."""

    def __init__(self, fmt: str, n_best: int):
        self.fmt, self.n_best = fmt, n_best
        self.csv = csv.writer(sys.stdout) if fmt == "csv" else None
        if self.csv:
            self.csv.writerow(["image", "caption", "logprob", "rank", "error"])

    def write(self, result) -> None:
        name, error = shown(result.source), shown_in(result.error or "", result.source)
        if result.error:
            print(f"showtell: error: {error}", file=sys.stderr)
        if self.fmt == "json":
            print(json.dumps({"image": name, "caption": result.caption, "logprob": result.logprob, "error": result.error,
                              "hypotheses": [{"caption": h.caption, "logprob": h.logprob, "score": h.score,
                                              "finished": h.finished} for h in result.hypotheses]}), flush=True)
        elif self.csv:
            if result.error:   # the text cells come from outside (file names, the vocabulary); the numbers are ours
                self.csv.writerow([csv_text(name), "", "", "", csv_text(error)])
            for rank, h in enumerate(result.hypotheses[: self.n_best], start=1):
                self.csv.writerow([csv_text(name), csv_text(h.caption), f"{h.logprob:.4f}", rank, ""])
        elif not result.error:
            print(f"{name}\t{result.caption}", flush=True)


def _options(args, captioner):
    """The decoding options by the library's rule, spelt as flags; sampling-only flags refused without --sample."""
    if not args.sample:
        for name in ("temperature", "top_k", "top_p"):
            if getattr(args, name) is not None:
                raise ShowtellError(f"--{name.replace('_', '-')}: only used with --sample")
    sampling = ({"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
                if args.sample else None)
    return captioner.options(CLI, beam_size=args.beam_size, n_best=args.n_best,
                             return_attention=args.attention is not None, sampling=sampling)


def cmd_caption(args) -> int:
    from ..inference.captioner import Captioner

    if args.attention is not None and args.attention.exists() and not args.attention.is_dir():
        raise ShowtellError(f"--attention {args.attention}: exists and is not a folder")
    captioner = Captioner.load([args.run] + args.ensemble, device=args.device, spelling=CLI)
    options = _options(args, captioner)
    files = expand_images(args.images)
    if not files:
        raise ShowtellError("no pictures found in " + " ".join(map(shown, args.images)))
    coco_ids = _coco_ids(args.coco_results, files, [args.run, *args.ensemble]) if args.coco_results else None
    targets = attention_targets(args.attention, files) if options.return_attention else {}
    if targets:
        args.attention.mkdir(parents=True, exist_ok=True)
    lines = Lines("json" if args.json else "csv" if args.csv else "text", args.n_best)
    failed, coco_pairs = 0, []
    with progress_bar(total=len(files), desc="captioning", unit="img", disable=len(files) < 2) as bar:
        for chunk in captioner.caption_chunks(files, options, args.batch_size):
            for result in chunk:
                failed += bool(result.error)
                lines.write(result)
                if coco_ids is not None and not result.error:
                    coco_pairs.append((coco_ids[result.source], result.caption))
                if targets and not result.error and result.hypotheses:
                    from ..reporting.figures import attention_figure

                    attention_figure(result.source, result.hypotheses[0], captioner.grid_side, targets[result.source])
            bar.update(len(chunk))
    _after_captions(args, targets, coco_ids, coco_pairs)
    if failed:
        print(f"showtell: {failed} of {len(files)} pictures could not be captioned", file=sys.stderr)
    return 1 if failed else 0


def _after_captions(args, targets: dict, coco_ids, coco_pairs) -> None:
    for source, target in targets.items():
        if target.stem != Path(source).stem:
            log.info("attention map of %s is %s (another picture has the same name)", shown(source), target)
    if coco_ids is not None:
        from ..data.coco_results import write_results

        write_results(args.coco_results, coco_pairs)
        log.info("COCO results file of %d pictures: %s", len(coco_pairs), args.coco_results)


def _coco_ids(out: Path, files: list[str], runs: list[str]) -> dict[str, int]:
    """Each picture's COCO id, parsed from its name, checked with the output file before captioning."""
    from ..data.coco_results import check_output_file, ids_from_names

    check_output_file(out, "--coco-results", runs=runs)
    return ids_from_names(files)


def cmd_score(args) -> int:
    """Each caption's log-probability, perplexity and per-word log-probabilities, in the order given."""
    from ..inference.captioner import Captioner

    captioner = Captioner.load([args.run] + args.ensemble, device=args.device, spelling=CLI)
    for result in captioner.logprob(args.picture, args.captions):
        if args.json:
            print(json.dumps({"image": shown(args.picture), **result.to_dict()}), flush=True)
            continue
        print(f"{result.logprob:9.4f}  perplexity {result.perplexity:8.3f}  {result.caption}")
        print("           " + "  ".join(f"{w} {lp:.3f}" for w, lp in zip(result.words, result.word_logprobs)))
    return 0
