"""Does a language model that already knows the captions' language help a prefix captioner? Offline,
at equal steps (issue 32, item 5):

  1. a byte-level BPE tokenizer is trained with `tokenizers` on the training captions;
  2. a tiny GPT-2 (2 layers, 64 wide) learns that text alone, no pictures, for a fixed number of
     steps, and is saved with `save_pretrained`; a second one of the same shape stays random;
  3. three prefix captioners train through `showtell train` for the same fixed steps on 600 scenes:
     (a) the text-pretrained LM frozen, Transformer mapper (ClipCap's frozen recipe)
     (b) the random LM frozen, Transformer mapper
     (c) the text-pretrained LM fine-tuned, MLP mapper (ClipCap's other recipe)
  4. each is evaluated on the 60 test scenes.

Expected and asserted: (a) and (c) well above (b) in CIDEr and in distinct captions, and (c) above
a floor that a caption chosen without looking at the picture cannot reach (a zeroed prefix, a
mutation in scripts/mutation_check.py, writes one caption for every picture). Measured here (2-core
Intel Xeon, avx512 + amx; see docs/decoders.md): CIDEr 0.56 / 0.00 / 1.02, distinct captions 6 / 1 / 12
of 60 (the test prints them).
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from test_prefix_lm import save_tokenizer  # noqa: E402

from showtell.data.formats import read_annotations  # noqa: E402
from showtell.data.synthetic import write_dataset  # noqa: E402
from showtell.evaluation.evaluate import evaluate_run  # noqa: E402

PRETRAIN_STEPS = 300     # of 64 captions each: the LM's training-set loss falls from ~6 to ~1 nat per token
EPOCHS = 40              # 15 steps of 32 pictures each: 600 steps per arm, ~50 s each on 2 cores
ARMS = {
    "a: text-pretrained LM, frozen": ("text", "transformer", True),
    "b: random LM, frozen": ("random", "transformer", True),
    "c: text-pretrained LM, fine-tuned": ("text", "mlp", False),
}


def _save_gpt2(folder, texts: list[str], pretrain_steps: int) -> str:
    """A 2-layer, 64-wide GPT-2 (GPT-2's own initialisation) beside a tokenizer trained on `texts`;
    `pretrain_steps` batches of language modelling on them ([eos] caption [eos])."""
    save_tokenizer(folder, texts, vocab_size=400)
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    eos = tok.eos_token_id
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                     bos_token_id=eos, eos_token_id=eos)
    lm = transformers.GPT2LMHeadModel(config)
    sequences = [[eos, *tok(text)["input_ids"], eos] for text in texts]
    optimizer, rng = torch.optim.AdamW(lm.parameters(), lr=3e-3), random.Random(0)
    for _ in range(pretrain_steps):
        batch = rng.sample(sequences, 64)
        width = max(map(len, batch))
        ids = torch.tensor([s + [eos] * (width - len(s)) for s in batch])
        labels = torch.tensor([s + [-100] * (width - len(s)) for s in batch])
        optimizer.zero_grad()
        lm(ids, labels=labels).loss.backward()
        optimizer.step()
    lm.save_pretrained(folder)   # safetensors
    return str(folder)


@pytest.fixture(scope="module")
def arms(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-lm-arms")
    data = write_dataset(root / "scenes", n_images=600, seed=5, side=32)
    texts = [c for r in read_annotations(str(data), None) if r.split == "train" for c in r.captions]
    lms = {"text": _save_gpt2(root / "lm-text", texts, PRETRAIN_STEPS), "random": _save_gpt2(root / "lm-random", texts, 0)}
    trainings = {}
    for name, (lm, mapper, frozen) in ARMS.items():
        settings = ["model.decoder=prefix-lm", f"model.language_model={lms[lm]}", "model.prefix_length=4",
                    f"model.mapper={mapper}", f"model.freeze_language_model={str(frozen).lower()}",
                    "model.transformer_layers=2", "model.transformer_heads=4", f"train.epochs={EPOCHS}",
                    "data.image_size=32", "train.val_max_images=16", "train.warmup_steps=20"]
        # one thread each, side by side: these small steps are bound by Python, not by arithmetic
        trainings[name[0]] = subprocess.Popen(
            [sys.executable, "-m", "showtell", "--quiet", "train", "--data", str(data), "--out", str(root / name[0]),
             "--threads", "1", "--config", "synth", *[a for s in settings for a in ("--set", s)]],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    results = {}
    for arm, process in trainings.items():
        _, err = process.communicate(timeout=1200)
        assert process.returncode == 0, err[-2000:]
        scored = evaluate_run(root / arm, [str(data)], None, show_progress=False, write_html=False)
        results[arm] = {"CIDEr": round(scored["scores"]["CIDEr"], 3), "images": len(scored["results"]),
                        "distinct": len({r.caption for r in scored["results"]})}
    print("prefix-LM arms at equal steps:", results)
    return results


@pytest.mark.slow
def test_a_text_pretrained_lm_captions_far_better_than_a_random_one_at_equal_steps(arms):
    a, b, c = arms["a"], arms["b"], arms["c"]
    assert a["images"] == b["images"] == c["images"] == 60
    assert a["CIDEr"] > b["CIDEr"] + 0.3 and c["CIDEr"] > b["CIDEr"] + 0.3, arms
    assert min(a["distinct"], c["distinct"]) >= max(4, b["distinct"] + 3), arms
    # the floor: one caption for every picture (what a zeroed prefix writes) scores far below it
    assert c["CIDEr"] > 0.8 and c["distinct"] >= 8, arms
