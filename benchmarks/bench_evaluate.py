"""`showtell evaluate` of an attention model on 500 pictures: the time of each stage (decode, score,
write) as shares of the whole, and the size of the report folder.

    python benchmarks/bench_evaluate.py [--pictures 500]      # about 2 minutes on 2 cores

The model is the `synth` preset's attention decoder with random weights whose <end> is suppressed,
so every caption has 20 words and 20 attention maps: the report's worst case. Speed of the stages
does not depend on training.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(pictures: int = 500) -> str:
    sys.path.insert(0, str(ROOT / "src"))
    import torch
    from common import table

    from showtell.config import load_config
    from showtell.data.formats import load_dataset
    from showtell.data.synthetic import write_dataset
    from showtell.device import configure_threads, instruction_set
    from showtell.evaluation import evaluate as ev
    from showtell.inference.captioner import Captioner
    from showtell.models.caption_model import build_model
    from showtell.run import Run
    from showtell.vocab import END, build_vocabulary

    configure_threads("auto", announce=False)
    work = Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    total = int(pictures / 0.05) + 20          # the synthetic split gives 5% to the test split
    annotations = write_dataset(work / "data", total, seed=7, side=64)
    config = load_config("synth", ["model.decoder=attention"])
    records = load_dataset([str(annotations)], None, config.data)
    vocab = build_vocabulary((t for r in records if r.split == "train" for t in r.tokens), 1)
    torch.manual_seed(0)
    model = build_model(config, vocab, pretrained=True)
    with torch.no_grad():
        model.decoder.output.bias[END] = -30.0
    run = Run.create(work / "run", config, vocab, {"data": [str(annotations)]})
    run.save_model(model, {"epoch": 0})
    captioner = Captioner.load(run.path)
    beam = 3
    options = captioner.options(beam_size=beam, n_best=beam, return_attention=True)
    times = {}
    started = time.perf_counter()
    chosen = ev.load_split(run, captioner, [str(annotations)], None, "test", None, False, pictures)
    times["load"] = time.perf_counter() - started
    started = time.perf_counter()
    decoded = ev.decode_split(captioner, chosen, options, show_progress=False)
    times["decode (beam 3, 20 words)"] = time.perf_counter() - started
    started = time.perf_counter()
    scored = ev.score_split(chosen, decoded, ev.METRICS, None, beam)
    times["score (coco-caption metrics, human bound, CHAIR)"] = time.perf_counter() - started
    started = time.perf_counter()
    ev.write_outputs(run, captioner, chosen, decoded, scored, options, [str(run.path)], None, True, None)
    times["write (report with maps, evaluation, card)"] = time.perf_counter() - started
    whole = sum(times.values())
    files = list((run.path / "report_files").iterdir())
    size = sum(p.stat().st_size for p in files) + (run.path / "report.html").stat().st_size
    rows = [(stage, f"{seconds:.1f}", f"{seconds / whole:.0%}") for stage, seconds in times.items()]
    maps = sum(p.name.startswith("attention") for p in files)
    return "\n".join([f"evaluate of {len(chosen.records)} pictures, attention decoder at the synth preset; "
                      f"{instruction_set()}, {torch.get_num_threads()} threads", "",
                      table(rows, ("stage", "seconds", "share")), "",
                      f"report: {len(files)} files in report_files ({maps} attention maps), "
                      f"{size / 1e6:.1f} MB with report.html"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=500)
    print(main(parser.parse_args().pictures))
