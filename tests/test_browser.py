"""The web page in headless Chromium: choose a picture, read the caption shown."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from conftest import Server


def chromium() -> str | None:
    for candidate in (os.environ.get("SHOWTELL_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium() is None, reason="no Chromium found (apt-get install chromium; .ci/run does this)"),
]

ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=ARGS)
        yield b
        b.close()


def _open(browser, server, tmp_path):
    page = browser.new_page(viewport={"width": 1100, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.length > 0")
    return page, errors


def test_upload_a_picture_and_read_its_caption(browser, trained_run, synth_dir, tmp_path):
    server = Server(trained_run)
    try:
        picture = sorted((synth_dir / "images").glob("*.png"))[3]
        page, errors = _open(browser, server, tmp_path)
        page.select_option("#beam", "3")
        page.set_input_files("#file", str(picture))
        page.wait_for_function("document.getElementById('alternatives').children.length > 0", timeout=30000)
        shown = page.inner_text("#caption").strip()
        expected = httpx.post(server.url + "/v1/captions", params={"beam_size": 3, "n_best": 3},
                              files=[("images", (picture.name, picture.read_bytes(), "image/png"))]).json()["results"][0]
        assert shown == expected["caption"]
        assert page.locator("#alternatives li").count() == len(expected["hypotheses"])
        assert page.inner_text("#error") == ""
        page.screenshot(path=str(tmp_path / "page.png"))
        assert errors == []
        # a file that is not a picture is refused by the page with a message, not sent
        bad = tmp_path / "notes.txt"
        bad.write_text("hello")
        page.set_input_files("#file", str(bad))
        page.wait_for_function("document.getElementById('error').textContent.length > 0")
        assert "not a picture" in page.inner_text("#error")
    finally:
        server.stop()


def test_attention_heat_map_on_hover(browser, attention_run, synth_dir, tmp_path):
    server = Server(attention_run)
    try:
        picture = sorted((synth_dir / "images").glob("*.png"))[1]
        page, errors = _open(browser, server, tmp_path)
        page.set_input_files("#file", str(picture))
        page.wait_for_function("document.querySelectorAll('#caption .word').length > 0", timeout=30000)
        assert page.is_visible("#hint")
        page.hover("#caption .word >> nth=0")
        page.wait_for_function("document.getElementById('heat').width > 0")
        painted = page.evaluate("""() => {
            const c = document.getElementById('heat');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
            return n; }""")
        assert painted > 0
        assert errors == []
    finally:
        server.stop()
