"""Write the saved attention and Transformer runs that tests/test_reference_runs.py holds today's code to.

The NIC run saved by an earlier showtell (tests/data/run-v1) pins the LSTM; nothing pinned the
attention step or the Transformer's memory, so a change to one of them moves teacher forcing,
decoding and the ONNX export together and their consistency tests still agree. This script trains
one tiny run of each on tests/data/run-v1-data and records, per test picture, the greedy caption,
the beam-3 captions (2 best), their log-probabilities, the smallest gap between the chosen word and
the runner-up along the greedy caption, and each reference caption's teacher-forced negative
log-likelihood from the training path (CaptionModel.forward) and its per-word log-probabilities from
the decoding path (Captioner.logprob). Pictures whose greedy choices or two best beams come within
MARGIN nats are left out, so another CPU's last digits cannot swap them.

    python scripts/make_reference_runs.py          # about a minute on 2 cores; rewrites tests/data/run-{attention,transformer}-v1*
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
MARGIN = 0.02   # nats: far above the 1e-6 that thread counts and instruction sets move fp32 log-probabilities
COMMON = ["--set", "model.encoder=small", "--set", "data.image_size=32", "--set", "model.embed_dim=16",
          "--set", "model.hidden_dim=32", "--set", "data.min_word_count=1", "--set", "train.batch_size=8",
          "--set", "train.keep_checkpoints=1", "--set", "train.warmup_steps=2", "--set", "train.val_max_images=4",
          "--set", "train.lr=0.005", "--set", "train.seed=5"]
RUNS = {
    "attention": ["--set", "model.decoder=attention", "--set", "model.attention_dim=16", "--set", "train.epochs=40"],
    "transformer": ["--set", "model.decoder=transformer", "--set", "model.transformer_layers=2",
                    "--set", "model.transformer_heads=2", "--set", "model.transformer_ff_dim=32",
                    "--set", "train.epochs=40"],
}


def greedy_margin(captioner, picture: str, caption: str) -> float:
    """Smallest gap (nats) between the word greedy chose and the best other writable word, over the
    caption's words and its <end>."""
    from showtell.vocab import END, PAD, START, UNK

    model = captioner.runtime.models[0]
    prepared, _ = captioner.load_images([picture])
    ids = captioner.vocab.ids_of(captioner.vocab.words_of(caption)) + [END]
    with torch.inference_mode():
        state = model.init_state(captioner.encode(prepared)[0])
        word, gaps = torch.tensor([START]), []
        for target in ids:
            logprobs, state, _ = model.step(word, state)
            row = logprobs[0].float().clone()
            row[[PAD, START, UNK]] = -float("inf")
            chosen = row[target].item()
            row[target] = -float("inf")
            gaps.append(chosen - row.max().item())
            word = torch.tensor([target])
    return min(gaps)


def teacher_forced_nll(captioner, picture: str, caption: str) -> float:
    """The training path's summed negative log-likelihood of one caption (nats)."""
    from showtell.vocab import END, START

    model = captioner.runtime.models[0]
    prepared, _ = captioner.load_images([picture])
    tokens = torch.tensor([[START, *captioner.vocab.ids_of(captioner.vocab.words_of(caption)), END]])
    with torch.inference_mode():
        return float(model(tokens, images=captioner.runtime.batch([prepared[0][0]])).nll)


def record(run: Path, dataset: Path) -> list[dict]:
    from showtell import Captioner

    captioner = Captioner.load(run)
    images = json.loads(dataset.read_text())["images"]
    rows = []
    for item in images:   # every picture: the runs are pinned, not evaluated
        picture = str(dataset.parent / item["filepath"] / item["filename"])
        greedy = captioner.caption(picture, beam_size=1)
        beam = captioner.caption(picture, beam_size=3, n_best=2)
        margin = greedy_margin(captioner, picture, greedy.caption)
        beam_gap = beam.hypotheses[0].score - beam.hypotheses[1].score
        if margin < MARGIN or beam_gap < MARGIN:
            continue
        references = [s["raw"] for s in item["sentences"][:2]]
        rows.append({
            "image": item["filename"], "greedy": greedy.caption, "greedy_logprob": greedy.logprob,
            "greedy_margin": margin, "beam": [h.caption for h in beam.hypotheses],
            "beam_logprobs": [h.logprob for h in beam.hypotheses], "beam_gap": beam_gap,
            "references": references,
            "reference_nll": [teacher_forced_nll(captioner, picture, r) for r in references],
            "reference_word_logprobs": [captioner.logprob(picture, r).word_logprobs for r in references],
        })
    return rows


def main() -> int:
    from showtell.cli import main as showtell

    torch.set_num_threads(1)
    dataset = DATA / "run-v1-data" / "dataset.json"
    for name, settings in RUNS.items():
        run = DATA / f"run-{name}-v1"
        shutil.rmtree(run, ignore_errors=True)
        if showtell(["--quiet", "train", "--data", str(dataset), "--out", str(run), "--threads", "1",
                     *COMMON, *settings]) != 0:
            return 1
        shutil.rmtree(run / "checkpoints")   # the tests load the model, not a training state
        (run / ".lock").unlink(missing_ok=True)
        rows = record(run, dataset)
        (DATA / f"run-{name}-v1-expected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{run.name}: {len(rows)} test pictures kept (choices {MARGIN}+ nats apart)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
