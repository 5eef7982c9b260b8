"""The product's own GPU path, end to end through the CLI, in one command: synth, prepare, train
(NIC from the cache; attention and Transformer end to end with the encoder fine-tuned; a stop and a
--resume; torchrun once), evaluate, caption, score, serve, export --onnx. One JSON line per stage
(seconds, images or captions/s, peak GPU memory, error) and a summary line; each stage has a time
limit, so the whole run ends in under 8 minutes on one H200 (--limit-scale stretches every limit,
for a loaded CPU).

On the device machine (Python 3.12 with torch 2.11, torchvision 0.26 and onnxruntime; no internet,
so the encoder's weights are random and saved to a file first), carry wheels for what it lacks:

    # here, once: the wheels showtell needs beside torch, for that machine's Python
    pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d shared/wheels \\
        fastapi uvicorn python-multipart pydantic starlette pycocoevalcap safetensors pyyaml tqdm \\
        array-api-compat filelock onnx onnxscript httpx
    # there, the one command (run's carry: nothing; the wheels travel in shared/):
    pip install -q --no-index --find-links shared/wheels fastapi uvicorn python-multipart pycocoevalcap \\
        array-api-compat filelock onnx onnxscript httpx && pip install -q --no-deps -e . && \\
        python benchmarks/gpu_check.py --device cuda --out $OUT/gpu-check

On a CPU (the test suite's smoke run): `python benchmarks/gpu_check.py --device cpu --tiny --limit-scale 5`.
With --tiny, the first attention and Transformer trainings are stopped by a budget too short for
more than one step (--max-minutes 0.0001), so the stop after step 1 and the resume from it are
certain, not a matter of the machine's speed; a training stage reports the step its run resumed
from (`resumed_at`), whether it stopped early and the run's history.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# runs `showtell ARGS` in this process's child, then reports its peak GPU memory on the last line
LAUNCHER = """
import json, sys, torch
from showtell.cli import main
code = main(sys.argv[1:])
peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
print("GPU-CHECK " + json.dumps({"code": code, "peak_gb": peak}), flush=True)
sys.exit(code)
"""


class Check:
    def __init__(self, out: Path, device: str, budget_s: float, limit_scale: float = 1.0):
        self.out, self.device, self.deadline = out, device, time.monotonic() + budget_s * limit_scale
        self.limit_scale = limit_scale
        self.results: list[dict] = []
        self.env = {**os.environ, "PYTHONPATH": _pythonpath()}

    def stage(self, name: str, args: list[str], limit_s: float, count: int = 0, unit: str = "images",
              launcher: list[str] | None = None) -> dict:
        """Run one CLI stage with a time limit; record seconds, rate, peak GPU memory, any error."""
        limit = max(5.0, min(limit_s * self.limit_scale, self.deadline - time.monotonic()))
        command = launcher or [sys.executable, "-c", LAUNCHER]
        trained = self.out / (args[args.index("--out") + 1] if "--out" in args else args[args.index("--resume") + 1]) \
            if "train" in args else None
        steps_before = _steps(trained)
        started = time.monotonic()
        try:
            done = subprocess.run([*command, *args], capture_output=True, text=True, timeout=limit, env=self.env)
            seconds = time.monotonic() - started
            report = next((json.loads(line[10:]) for line in done.stdout.splitlines() if line.startswith("GPU-CHECK ")),
                          {"code": done.returncode, "peak_gb": None})
            error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["exit %d" % done.returncode])[-1]
        except subprocess.TimeoutExpired:
            seconds, report, error, done = limit, {"peak_gb": None}, f"stopped at its time limit ({limit:.0f} s)", None
        result = {"stage": name, "seconds": round(seconds, 2), "limit_s": round(limit, 1), "peak_gpu_gb": report.get("peak_gb"),
                  "error": error}
        if count and not error:
            result[f"{unit}_per_s"] = round(count / seconds, 1)
        if trained is not None and not error and _steps(trained) > steps_before:
            config = json.loads((trained / "config.json").read_text())
            steps = _steps(trained) - steps_before       # this stage's steps (a resume adds to a run's)
            samples = steps * config["train"]["batch_size"] * config["train"]["captions_per_image"]
            result["steps"], result["caption_samples_per_s"] = steps, round(samples / seconds, 1)
            result.update(_progress(trained, done.stderr if done is not None else ""))
        print(json.dumps(result), flush=True)
        self.results.append(result)
        self.last_stdout = done.stdout if done is not None else ""
        return result


def _pythonpath() -> str:
    """This checkout's src/ for every stage, after a PYTHONPATH the caller set (a copy of src/ under
    test, as scripts/mutation_check.py gives, comes first)."""
    given = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*given, str(ROOT / "src")])


def _steps(run: Path | None) -> int:
    """Training steps a run has recorded in training.json (0 before any)."""
    try:
        return int(json.loads((run / "training.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _progress(run: Path, stderr: str) -> dict:
    """Where a training stage left its run: whether it stopped early (a budget or a signal), the
    run's (epoch, step) history, and for a resume the (epoch, step in epoch) it logged resuming at."""
    training = json.loads((run / "training.json").read_text())
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines() if line.strip()] \
        if (run / "history.jsonl").exists() else []
    resumed = re.search(r"resuming .+ at epoch (\d+), step (\d+)", stderr)
    return {"stopped_early": bool(training.get("stopped_early")), "history": [[h["epoch"], h["step"]] for h in history],
            "resumed_at": [int(resumed.group(1)), int(resumed.group(2))] if resumed else None}


def random_encoder_weights(name: str, path: Path) -> None:
    """torchvision's architecture with random weights, saved as safetensors (the machine has no internet)."""
    import torch
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke sizes: 60 pictures at 64 px, resnet18, 4 steps")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--encoder", default="resnet50")
    parser.add_argument("--budget-minutes", type=float, default=7.5)
    parser.add_argument("--limit-scale", type=float, default=1.0,
                        help="multiply every stage's time limit and the whole budget (a slow or loaded CPU)")
    args = parser.parse_args()
    if args.tiny:
        args.images, args.size, args.encoder = 60, 64, "resnet18"
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.device, 60 * args.budget_minutes, args.limit_scale)
    small = args.tiny
    weights = out / f"{args.encoder}-random.safetensors"
    random_encoder_weights(args.encoder, weights)
    data, features = out / "data", out / "features"
    common = ["--set", f"train.device={args.device}", "--set", f"model.encoder={args.encoder}",
              "--set", f"model.encoder_weights={weights}", "--set", f"data.image_size={args.size}",
              "--set", "data.min_word_count=1"]
    bf16 = ["--set", "train.precision=bf16"] if args.device.startswith("cuda") else []
    steps = ["--set", "train.batch_size=8", "--set", "train.val_max_images=16", "--set", "train.epochs=1"] if small else \
        ["--set", "train.batch_size=64", "--set", "train.val_max_images=500", "--set", "train.epochs=2"]

    check.stage("synth", ["synth", str(data), "--images", str(args.images), "--size", str(args.size)], 90, args.images)
    check.stage("prepare resnet features", ["prepare", "--data", str(data / "dataset.json"), "--out", str(features),
                                            "--batch-size", "128", *common, "--set", "model.freeze_encoder=true",
                                            "--set", "model.decoder=attention"], 120, args.images)
    check.stage("train NIC from the cache", ["train", "--features", str(features), "--out", str(out / "nic"), *common,
                                             *bf16, *steps], 60)
    for decoder in ("attention", "transformer"):
        check.stage(f"train {decoder} end to end, encoder fine-tuned",
                    ["train", "--data", str(data / "dataset.json"), "--out", str(out / decoder), *common, *bf16, *steps,
                     "--set", f"model.decoder={decoder}", "--set", "model.freeze_encoder=false",
                     "--set", "train.finetune_encoder_after=0", "--max-minutes", "0.0001" if small else "0.75"], 75)
        check.stage(f"resume {decoder}", ["train", "--resume", str(out / decoder), "--set", "train.epochs=2"]
                    if small else ["train", "--resume", str(out / decoder), "--max-minutes", "0.5"], 60)
    check.stage("torchrun --nproc_per_node=1 (NCCL on GPU, gloo on CPU)",
                ["-m", "showtell", "train", "--features", str(features), "--out", str(out / "ddp"), *common, *steps],
                60, launcher=[sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone"])
    run = out / "attention"
    check.stage("evaluate beam 3", ["evaluate", str(run), "--beam-size", "3", "--device", args.device, "--json"], 90)
    pictures = sorted(str(p) for p in (data / "images").glob("*.png"))[:16]
    check.stage("caption 16 pictures beam 3", ["caption", str(run), *pictures, "--beam-size", "3", "--device", args.device,
                                               "--json"], 45, len(pictures), unit="captions")
    check.stage("score 2 captions", ["score", str(run), pictures[0], "a red circle", "two blue squares",
                                     "--device", args.device], 30)
    check.stage("serve one upload", [str(ROOT / "benchmarks" / "gpu_check.py"), "--serve-once", str(run), args.device,
                                     pictures[0]], 60, launcher=[sys.executable])
    check.stage("export --onnx and caption with onnxruntime", [str(ROOT / "benchmarks" / "gpu_check.py"), "--onnx-equal",
                                                                str(out / "nic"), str(out / "nic-onnx"), *pictures[:8]],
                90, launcher=[sys.executable])
    failed = [r["stage"] for r in check.results if r["error"]]
    print(json.dumps({"summary": True, "device": args.device, "stages": len(check.results), "failed": failed,
                      "seconds": round(sum(r["seconds"] for r in check.results), 1),
                      "peak_gpu_gb": max((r["peak_gpu_gb"] or 0.0) for r in check.results)}), flush=True)
    return 1 if failed else 0


def serve_once(run: str, device: str, picture: str) -> int:
    """`showtell serve` on a free port, one upload, its answer checked."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "showtell", "serve", run, "--port", str(port), "--device", device],
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/captions?beam_size=3", timeout=60,
                            files=[("images", ("p.png", Path(picture).read_bytes(), "image/png"))])
        ok = answer.status_code == 200 and bool(answer.json()["results"][0]["caption"])
        print("GPU-CHECK " + json.dumps({"code": 0 if ok else 1, "peak_gb": None}))
        return 0 if ok else 1
    finally:
        server.terminate()
        server.wait(timeout=30)


def onnx_equal(run: str, package: str, pictures: list[str]) -> int:
    """export --onnx of a GPU-trained run; onnxruntime's captions equal PyTorch's (on the CPU)."""
    from showtell import Captioner
    from showtell.cli import main as cli

    if cli(["export", run, package, "--onnx"]) != 0:
        return 1
    theirs = [r.caption for r in Captioner.load(run, device="cpu").caption(pictures, beam_size=3)]
    ours = [r.caption for r in Captioner.load(package).caption(pictures, beam_size=3)]
    print("GPU-CHECK " + json.dumps({"code": 0 if ours == theirs else 1, "peak_gb": None}))
    return 0 if ours == theirs else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-once":
        sys.exit(serve_once(*sys.argv[2:5]))
    if len(sys.argv) > 1 and sys.argv[1] == "--onnx-equal":
        sys.exit(onnx_equal(sys.argv[2], sys.argv[3], sys.argv[4:]))
    sys.exit(main())
