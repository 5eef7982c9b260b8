"""Make the README's screenshot of the web page: serve a run, upload a picture in headless
Chromium, hover over a word (attention models) and save the page as a PNG.

    python scripts/web_page_screenshot.py RUN_DIR PICTURE [--word N] [--out docs/web-page.png]

Needs the dev extras (Playwright) and Debian's chromium (apt-get install chromium).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time

import httpx
from playwright.sync_api import sync_playwright


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("picture")
    parser.add_argument("--word", type=int, default=None, help="hover over this word of the caption (0-based)")
    parser.add_argument("--beam-size", default="3")
    parser.add_argument("--out", default="docs/web-page.png")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "showtell", "serve", args.run, "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--headless=new", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 980, "height": 560}, device_scale_factor=1)
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model').textContent.length > 0")
            page.select_option("#beam", args.beam_size)
            page.set_input_files("#file", args.picture)
            page.wait_for_function("document.getElementById('alternatives').children.length > 0", timeout=60000)
            if args.word is not None:
                page.hover(f"#caption .word >> nth={args.word}")
                page.wait_for_timeout(300)
            page.screenshot(path=args.out, full_page=True)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
