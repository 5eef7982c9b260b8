"""Why beam search can score below greedy decoding: decode one trained run's test pictures many
ways and print, per way, CIDEr-D and BLEU-4, caption length against the references', how many
captions finished, their mean log-probability, how many differ from greedy's, and n-best reranking.

    python scripts/beam_vs_greedy.py RUN_DIR [--data FILE] [--split test]   # a few minutes on 2 cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter

import torch

from showtell.data.formats import load_dataset
from showtell.decoding.captions import hypotheses_from
from showtell.decoding.search import decode
from showtell.evaluation.metrics import CiderD, cider_d, ptb_tokenize, score_tokenised
from showtell.inference.captioner import Captioner
from showtell.run import Run


def encode_all(captioner, paths, batch_size=64):
    feats = []
    for start in range(0, len(paths), batch_size):
        prepared, errors = captioner.load_images(paths[start:start + batch_size])
        assert not any(errors), errors
        with torch.no_grad():
            feats.append(captioner.runtime.models[0].encode(torch.stack([p[0] for p in prepared])))
    return {k: torch.cat([f[k] for f in feats]) for k in feats[0]}


def decode_all(captioner, feats, beam, alpha=0.0, block_unk=True, n_best=1, batch_size=64):
    model, d = captioner.runtime.models[0], captioner.config.decode
    out = []
    n = next(iter(feats.values())).shape[0]
    with torch.no_grad():
        for start in range(0, n, batch_size):
            part = {k: v[start:start + batch_size] for k, v in feats.items()}
            decoded = decode(model, part, beam, d.max_length, alpha, block_unk, n_best=min(n_best, beam))
            out += hypotheses_from(decoded, captioner.vocab)
    return out


def longest(hyps):
    """The n-best list's longest caption (the most probable among equally long ones)."""
    return max(hyps, key=lambda h: (len(h.caption.split()), h.logprob))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--data", action="append", default=[])
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    captioner = Captioner.load(args.run)
    data = args.data or Run(args.run).sources().get("data")
    records = [r for r in load_dataset(data, None, captioner.config.data) if r.split == args.split]
    feats = encode_all(captioner, [str(r.path) for r in records])
    keys = [str(i) for i in range(len(records))]
    refs = ptb_tokenize({k: list(r.captions) for k, r in zip(keys, records)})
    ref_len = [len(c.split()) for k in keys for c in refs[k]]
    scorer = CiderD(refs.values())
    print(f"{len(records)} pictures; reference length mean {statistics.mean(ref_len):.2f} words, "
          f"per-picture shortest reference mean {statistics.mean(min(len(c.split()) for c in refs[k]) for k in keys):.2f}")

    def evaluate(name, hyps_per_image, pick=lambda hyps: hyps[0], baseline=None):
        chosen = [pick(h) for h in hyps_per_image]
        tok = ptb_tokenize({k: [h.caption] for k, h in zip(keys, chosen)})
        res = {k: tok[k] for k in keys}
        scores, _ = score_tokenised(refs, res, ("Bleu_4",))
        cider, each = cider_d(refs, {k: res[k][0] for k in keys})
        lengths = [len(h.caption.split()) for h in chosen]
        row = {"name": name, "CIDEr": cider, "Bleu_4": scores["Bleu_4"], "len": statistics.mean(lengths),
               "finished": sum(h.finished for h in chosen) / len(chosen),
               "logprob": statistics.mean(h.logprob for h in chosen), "distinct": len({h.caption for h in chosen}),
               "each": each, "captions": [h.caption for h in chosen], "lengths": lengths}
        if baseline:
            diff = [k for k, a, b in zip(keys, row["captions"], baseline["captions"]) if a != b]
            row["differ"] = len(diff)
            row["gain_where_differ"] = statistics.mean(row["each"][k] - baseline["each"][k] for k in diff) if diff else 0.0
            row["logprob_gain_where_differ"] = statistics.mean(
                a.logprob - b for a, b, k in zip(chosen, baseline["logprobs"], keys) if k in set(diff)) if diff else 0.0
        row["logprobs"] = [h.logprob for h in chosen]
        flag = ""
        if baseline:
            flag = (f"  differ {row['differ']:3d}  dCIDEr there {row['gain_where_differ']:+.3f}"
                    f"  dlogprob there {row['logprob_gain_where_differ']:+.3f}")
        print(f"{name:34s} CIDEr {cider:.3f}  BLEU-4 {scores['Bleu_4']:.3f}  len {row['len']:5.2f}  "
              f"finished {row['finished']:.2f}  logprob {row['logprob']:7.3f}  distinct {row['distinct']:3d}{flag}", flush=True)
        return row

    greedy = evaluate("greedy", decode_all(captioner, feats, 1))
    evaluate("greedy, <unk> allowed", decode_all(captioner, feats, 1, block_unk=False), baseline=greedy)
    rows = {}
    for beam in (2, 3, 5, 10):
        for alpha in (0.0, 0.5, 1.0):
            hyps = decode_all(captioner, feats, beam, alpha, n_best=beam)
            rows[beam, alpha] = evaluate(f"beam {beam}, length_penalty {alpha}", hyps, baseline=greedy)
            if alpha == 0.0:
                rows[beam, "hyps"] = hyps
    evaluate("beam 3, <unk> allowed", decode_all(captioner, feats, 3, block_unk=False), baseline=greedy)
    for beam in (3, 5):
        hyps = rows[beam, "hyps"]
        evaluate(f"beam {beam} n-best: longest", hyps, longest, baseline=greedy)
        oracle = []
        for k, h in zip(keys, hyps):  # document frequencies from the whole split, as in the corpus score
            tok = ptb_tokenize({str(j): [x.caption] for j, x in enumerate(h)})
            best = max(range(len(h)), key=lambda j: scorer.score(tok[str(j)][0], refs[k]))
            oracle.append(h[best])
        evaluate(f"beam {beam} n-best: oracle (upper bound)", [[o] for o in oracle], baseline=greedy)

    print("\ncaption length (words): share of references / greedy / beam 3 / beam 3 lp 1.0")
    ref_count, g_count = Counter(ref_len), Counter(greedy["lengths"])
    b_count, l_count = Counter(rows[3, 0.0]["lengths"]), Counter(rows[3, 1.0]["lengths"])
    for n in sorted(set(ref_count) | set(g_count) | set(b_count) | set(l_count)):
        print(f"  {n:2d}: {ref_count[n] / len(ref_len):.3f} / {g_count[n] / len(keys):.3f} / "
              f"{b_count[n] / len(keys):.3f} / {l_count[n] / len(keys):.3f}")
    common = Counter(rows[3, 0.0]["captions"]).most_common(5)
    print("most frequent beam-3 captions:", common)
    print("most frequent greedy captions:", Counter(greedy["captions"]).most_common(5))
    return 0


if __name__ == "__main__":
    sys.exit(main())
