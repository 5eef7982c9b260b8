"""Make the README's screenshot of TensorBoard showing a run while it trains: start a short
training with train.log=tensorboard, serve RUN/tensorboard with TensorBoard, open its scalars page
in headless Chromium once two validations are in, and save it as a PNG.

    python scripts/tensorboard_screenshot.py [--out docs/tensorboard.png] [--work DIR] [--minutes 2]

Needs the tensorboard extra, the dev extras (Playwright) and Debian's chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fail(message: str) -> None:
    print(f"tensorboard_screenshot: error: {message}", file=sys.stderr)
    sys.exit(2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "tensorboard.png"))
    parser.add_argument("--work", help="folder for the data and the run (default: a temporary folder)")
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget (default 2)")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser")
                        or "/usr/bin/chromium")
    args = parser.parse_args()

    if not Path(args.chromium).is_file():
        fail(f"Chromium not found at {args.chromium}: install it (apt-get install chromium) or give --chromium PATH")
    try:
        import httpx
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        fail(f"{error.name} is not installed: pip install -e '.[dev]'")
    tensorboard = shutil.which("tensorboard") or str(Path(sys.executable).with_name("tensorboard"))
    if not Path(tensorboard).is_file():
        fail("tensorboard is not installed: pip install -e '.[tensorboard]'")

    work = Path(args.work or tempfile.mkdtemp(prefix="showtell-tb-"))
    data, run = work / "shapes", work / "run"
    showtell = [sys.executable, "-m", "showtell"]
    if not (data / "dataset.json").is_file():
        subprocess.run([*showtell, "--quiet", "synth", str(data), "--images", str(args.images), "--size", "64"], check=True)
    shutil.rmtree(run, ignore_errors=True)
    trainer = subprocess.Popen([*showtell, "--quiet", "train", "--data", str(data / "dataset.json"), "--out", str(run),
                                "--config", "synth", "--set", "data.image_size=64", "--set", "train.log=tensorboard",
                                "--set", "train.epochs=30", "--set", "train.val_max_images=60",
                                "--max-minutes", str(args.minutes)])
    port = free_port()
    board = None
    try:
        deadline = time.monotonic() + 60 * args.minutes + 120
        history = run / "history.jsonl"
        while not history.is_file() or len(history.read_text().splitlines()) < 2:   # two validations in the events
            if trainer.poll() is not None or time.monotonic() > deadline:
                fail("training ended or stalled before its second validation")
            time.sleep(2)
        time.sleep(10)                                       # a few more updates on the curves
        board = subprocess.Popen([tensorboard, "--logdir_spec", f"{run.name}:{run / 'tensorboard'}", "--port", str(port),
                                  "--host", "127.0.0.1", "--reload_interval", "2"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/data/logdir", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            fail("TensorBoard did not start")
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--headless=new", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 1250}, device_scale_factor=1)
            page.goto(url + "/?darkMode=false#timeseries")
            page.wait_for_selector("canvas, svg.line-chart, .line-chart", timeout=60000)
            if page.locator("text=HISTOGRAMS").count():      # the settings pane hides the curves
                page.get_by_role("button", name="Settings").click(timeout=3000)
            try:   # the curves that matter
                page.locator("input[placeholder*='Filter tags']").first.fill("val/|train/loss|step/loss", timeout=5000)
                page.keyboard.press("Escape")                 # close the tag suggestions
            except Exception as error:  # a newer TensorBoard page: keep its default view
                print(f"tensorboard_screenshot: warning: all tags shown ({error.__class__.__name__})", file=sys.stderr)
            page.wait_for_timeout(4000)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=False)
            browser.close()
        print(f"wrote {args.out} (training still running: {trainer.poll() is None})")
    finally:
        if board is not None:
            board.terminate()
            board.wait()
        if trainer.poll() is None:
            trainer.terminate()      # SIGTERM: the trainer saves a checkpoint and stops
            trainer.wait()


if __name__ == "__main__":
    main()
