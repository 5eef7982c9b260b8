"""`showtell demo`: the whole job on the built-in data, in a few minutes on two CPU cores.

Draws synthetic scenes, trains a Show, Attend and Tell captioner (a small CNN from scratch + an
LSTM that attends over its grid), captions the held-out test pictures with beam 3 (the preset's
decoding for attention) and greedily, and shows the scores and object hallucination (CHAIR) next
to the human bound, some pictures' captions next to their references, and where everything was
saved.

The decoder is soft attention, not NIC's single picture vector: in the same minutes it names the
shapes that are there far more often, although it trains fewer steps (docs/evaluation.md).

It trains a fixed number of steps (DEMO_EPOCHS), not for a time budget: the model gets colours right
early and learns to tell circles, squares and triangles apart between about 450 and 750 steps, so a
budget gave a slower machine (an AVX2-only CPU) captions that name the wrong shapes; the same steps
give every machine the same captioner, later on a slow one. `--minutes` trains for a budget instead
(with `--epochs` as its upper bound).
Measured in docs/evaluation.md, as are DEMO_SETTINGS' 64 pictures a step.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from ..config import load_config
from ..data.formats import load_dataset
from ..data.synthetic import write_dataset
from ..decoding.options import decoding_label
from ..errors import ShowtellError
from ..evaluation.evaluate import evaluate_run
from ..progress import progress_bar
from ..reporting.figures import samples_figure
from ..training.entry import train

MARKER = ".showtell-demo"
DEMO_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
# The demo's settings on top of the synth preset (see the module docstring): attention; 64 pictures a
# step with one caption each instead of 32 with three (more pictures per second of CNN work).
DEMO_SETTINGS = ("model.decoder=attention", "train.batch_size=64", "train.captions_per_image=1")
DEMO_EPOCHS = 20        # 760 steps over the 2,400 training pictures


def _prepare_folder(out: Path) -> None:
    """Reuse a folder an earlier demo made; never delete anything else."""
    if out.exists():
        if not out.is_dir():
            raise ShowtellError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / MARKER).exists():
            raise ShowtellError(f"--out {out}: folder exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by showtell demo; safe to delete\n")


def run_demo(out: Path, minutes: float | None = None, n_images: int = 3000, seed: int = 0,
             epochs: int | None = None) -> dict:
    """Train exactly `epochs` epochs (DEMO_EPOCHS when neither is given: the same model on any machine,
    however busy), or, given `minutes`, for that time budget (fewer steps on a slower machine), with
    `epochs` (else the preset's) as its upper bound."""
    if epochs is None and minutes is None:
        epochs = DEMO_EPOCHS
    started = time.monotonic()
    say = lambda text="": print(text, flush=True)  # noqa: E731
    _prepare_folder(out)
    data_dir, run_dir = out / "data", out / "run"

    say(f"[1/4] drawing {n_images} synthetic scenes (one to three shapes, five captions each) into {data_dir}")
    with progress_bar(total=n_images, unit="img", leave=False) as bar:
        annotations = write_dataset(data_dir, n_images, seed=seed, progress=bar.update)

    config = load_config("synth", [*DEMO_SETTINGS, *([f"train.epochs={epochs}"] if epochs is not None else [])])
    records = load_dataset([str(annotations)], None, config.data)
    budget = f"{epochs} epochs" if minutes is None else f"up to {minutes:g} minutes"
    say(f"[2/4] training Show, Attend and Tell (small CNN from scratch + LSTM with attention) for {budget}")
    summary = train(config, records, run_dir, {"data": [str(annotations.resolve())], "images": None, "features": None},
                    max_minutes=minutes)

    # the report, samples.png and `showtell caption` use the run's own decoding (the preset's beam 3 for
    # attention); greedy is scored beside it
    beam_size = config.decode.beam_size
    say(f"[3/4] captioning the held-out test pictures ({decoding_label(beam_size)}, and greedily beside it)")
    report = evaluate_run(run_dir, [str(annotations)], None, "test", beam_size=beam_size, metrics=DEMO_METRICS)
    greedy = None if beam_size == 1 else evaluate_run(run_dir, [str(annotations)], None, "test", beam_size=1,
                                                      metrics=("Bleu_4", "CIDEr"), write_html=False,
                                                      show_progress=False)["scores"]
    scores, human = report["scores"], report["human"]

    say("[4/4] results on the test split\n")
    objects = "CHAIR_s" in scores      # object hallucination, known on the built-in scenes (chair.py)
    say(f"{'':14} {'BLEU-4':>7} {'CIDEr':>7} {'CIDEr/human':>12}" + (f" {'CHAIR_s':>8} {'recall':>7}" if objects else "")
        + f" {'distinct':>9}")
    for label, s in (("model, greedy", greedy), (f"model, {decoding_label(beam_size)}", scores))[greedy is None:]:
        say(f"{label:14} {s['Bleu_4']:7.3f} {s['CIDEr']:7.3f} {s['CIDEr'] / human['CIDEr']:12.2f}"
            + (f" {s['CHAIR_s']:8.3f} {s['object_recall']:7.3f}" if objects else "")
            + f" {s['distinct_captions']:>5}/{s['n_images']}")
    say(f"{'human':14} {human['Bleu_4']:7.3f} {human['CIDEr']:7.3f} {1:12.2f}")
    say(f"(human: each reference scored against the other four; perplexity {scores['perplexity']:.3f})")
    if objects:
        say(f"(object hallucination, CHAIR: {scores['CHAIR_s']:.3f} of the {decoding_label(beam_size)} captions name a "
            f"shape that is not in the picture; {scores['CHAIR_i']:.3f} of the shapes they name are not; recall: "
            f"{scores['object_recall']:.3f} of the shapes drawn are named)")
    say()

    picks = list(range(0, len(report["records"]), max(1, len(report["records"]) // 8)))[:8]
    absent = [report["hallucinated"].get(str(i), []) for i in picks]
    for i, wrong in zip(picks[:6], absent):
        record, result = report["records"][i], report["results"][i]
        say(f"  {record.path.name}")
        say(f"    model:     {result.caption}" + (f"   <- no {', '.join(wrong)} in the picture" if wrong else ""))
        say(f"    reference: {record.captions[0]}")
        say(f"    reference: {record.captions[1]}")
    samples = samples_figure([report["records"][i].path for i in picks], [report["results"][i].caption for i in picks],
                             [report["records"][i].captions[0] for i in picks], run_dir / "samples.png", wrong=absent)
    example = report["records"][picks[0]].path
    say(f"\nsaved the model package in {run_dir} ({summary['steps']} training steps, best epoch {summary['best_epoch']})")
    wrong_samples = f" ({sum(map(bool, absent))} of {len(picks)} name a shape that is not in the picture)" if objects else ""
    say(f"  pictures with captions: {samples}{wrong_samples}")
    say(f"  full report:            {report['report_path']}")
    say("next:")
    say(f"  showtell caption {run_dir} {example}")
    say(f"  showtell evaluate {run_dir} --data {annotations}")
    say(f"  showtell serve {run_dir}")
    say(f"demo finished in {(time.monotonic() - started) / 60:.1f} minutes")
    return report
