"""Real folders hold broken and unusual pictures. Each one is converted correctly or refused with
a message naming the file and the reason, in every entry point; the rest of the work goes on."""

from __future__ import annotations

import io
import json
import logging
import zlib

import numpy as np
import pytest
from conftest import save_preset_encoder
from PIL import Image

from showtell.data.images import load_image
from showtell.errors import ImageError

RED = (220, 30, 30)


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_suite(folder):
    """{name: expected} where expected is ('ok', check) or ('refused', words in the message)."""
    folder.mkdir(parents=True, exist_ok=True)
    suite = {}

    def add(name, data, expected):
        (folder / name).write_bytes(data)
        suite[name] = expected

    red = Image.new("RGB", (48, 40), RED)
    add("zero.png", b"", ("refused", "empty file"))
    jpeg = io.BytesIO()
    Image.effect_noise((64, 64), 60).convert("RGB").save(jpeg, format="JPEG")
    add("truncated.jpg", jpeg.getvalue()[: len(jpeg.getvalue()) // 2], ("refused", "truncated"))
    add("notes.png", b"these are my holiday notes, not a picture", ("refused", "not an image"))
    add("really_png.jpg", _png(red), ("ok", lambda a: np.allclose(a[0, 0], RED, atol=2)))
    header = bytearray(_png(Image.new("L", (1, 1))))
    header[16:24] = (40000).to_bytes(4, "big") * 2  # IHDR claims 40000 x 40000, with a valid checksum
    header[29:33] = zlib.crc32(bytes(header[12:29])).to_bytes(4, "big")
    add("bomb.png", bytes(header), ("refused", "too many pixels"))
    cmyk = io.BytesIO()
    Image.new("CMYK", (30, 30), (0, 255, 255, 0)).save(cmyk, format="JPEG")
    add("cmyk.jpg", cmyk.getvalue(), ("ok", lambda a: a[5, 5, 0] > 200 and a[5, 5, 1] < 60 and a[5, 5, 2] < 60))
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((*RED, 255), (5, 5, 15, 15))
    add("transparent.png", _png(rgba), ("ok", lambda a: tuple(a[0, 0]) == (255, 255, 255) and tuple(a[10, 10]) == RED))
    add("palette.png", _png(red.convert("P", palette=Image.ADAPTIVE)), ("ok", lambda a: np.allclose(a[3, 3], RED, atol=3)))
    gif = io.BytesIO()
    transparent_gif = Image.new("P", (10, 10), 0)
    transparent_gif.putpalette([255, 255, 255, *RED] + [0] * 762)
    transparent_gif.paste(1, (0, 0, 5, 10))
    transparent_gif.save(gif, format="GIF", transparency=0)
    add("palette_transparent.gif", gif.getvalue(), ("ok", lambda a: tuple(a[5, 8]) == (255, 255, 255) and tuple(a[5, 1]) == RED))
    add("gray.png", _png(Image.new("L", (16, 16), 77)), ("ok", lambda a: tuple(a[0, 0]) == (77, 77, 77)))
    deep = Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16))
    add("gray16.png", _png(deep), ("ok", lambda a: tuple(a[0, 0]) == (255, 255, 255)))
    # a phone picture stored sideways: red on its left, with EXIF orientation 6 (rotate 90 clockwise to view)
    sideways = Image.new("RGB", (60, 40), (30, 30, 220))
    sideways.paste(RED, (0, 0, 30, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = io.BytesIO()
    sideways.save(rotated, format="JPEG", exif=exif.tobytes(), quality=95)
    add("exif_rotated.jpg", rotated.getvalue(),
        ("ok", lambda a: a.shape[:2] == (60, 40) and a[5, 20, 0] > 180 and a[55, 20, 2] > 180))
    frames = [Image.new("RGB", (12, 12), RED), Image.new("RGB", (12, 12), (30, 30, 220))]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    add("animated.gif", animated.getvalue(), ("ok", lambda a: a[0, 0, 0] > 180 and a[0, 0, 2] < 80))
    return suite


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return folder, make_suite(folder)


def test_each_picture_is_converted_or_refused_with_its_reason(suite):
    folder, expected = suite
    for name, (outcome, check) in expected.items():
        path = folder / name
        if outcome == "ok":
            image = load_image(path, max_pixels=10_000_000)
            assert image.mode == "RGB", name
            assert check(np.asarray(image)), name
        else:
            with pytest.raises(ImageError) as error:
                load_image(path, max_pixels=10_000_000)
            assert str(error.value).startswith(str(path)) and check in str(error.value), (name, str(error.value))


def test_python_api_goes_on_past_bad_pictures(suite, trained_run):
    from showtell import Captioner

    folder, expected = suite
    names = sorted(expected)
    results = Captioner.load(trained_run).caption([str(folder / n) for n in names])
    for name, result in zip(names, results):
        if expected[name][0] == "ok":
            assert result.error is None and result.caption, name
        else:
            assert result.caption == "" and expected[name][1] in result.error and name in result.error, name


def test_cli_caption_reports_each_bad_file_and_exits_non_zero(suite, trained_run):
    from conftest import run_cli

    folder, expected = suite
    done = run_cli("caption", str(trained_run), str(folder))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    printed = {line.split("\t")[0].split("/")[-1] for line in done.stdout.splitlines()}
    assert printed == {n for n, (o, _) in expected.items() if o == "ok"}
    for name, (outcome, words) in expected.items():
        if outcome == "refused":
            assert f"{name}: " in done.stderr and words in done.stderr, name
    bad = sum(1 for o, _ in expected.values() if o == "refused")
    assert f"{bad} of {len(expected)} pictures could not be captioned" in done.stderr


def test_the_service_refuses_bad_uploads_without_500(suite, trained_run):
    import httpx
    from conftest import Server

    folder, expected = suite
    server = Server(trained_run, "--max-pixels", "10000000")
    try:
        for name, (outcome, words) in expected.items():
            response = httpx.post(server.url + "/v1/captions", timeout=60,
                                  files=[("images", (name, (folder / name).read_bytes(), "application/octet-stream"))])
            if outcome == "ok":
                assert response.status_code == 200, (name, response.text)
            else:
                assert response.status_code in (413, 415, 422), (name, response.status_code)
                assert words in response.json()["detail"] and name in response.json()["detail"]
    finally:
        assert "Traceback" not in server.stop()


def test_training_and_prepare_skip_and_count_bad_pictures(suite, tmp_path, caplog):
    from showtell.config import load_config
    from showtell.data.features import FeatureCache
    from showtell.data.formats import load_dataset
    from showtell.training.entry import train
    from showtell.training.prepare import prepare

    folder, expected = suite
    rows = [(name, caption) for name in sorted(expected) for caption in ("a red square", "a small red square")]
    (folder / "captions.jsonl").write_text("".join(json.dumps({"image": n, "caption": c, "split": "train"}) + "\n"
                                                   for n, c in rows))
    config = load_config("synth", ["data.image_size=32", "model.hidden_dim=16", "train.epochs=2", "train.batch_size=4",
                                   "data.max_image_pixels=10000000"])
    records = load_dataset([str(folder / "captions.jsonl")], folder, config.data)
    bad = sorted(n for n, (o, _) in expected.items() if o == "refused")
    with caplog.at_level(logging.INFO, logger="showtell"):
        summary = train(config, records, tmp_path / "run", show_progress=False)
    assert summary["skipped_images"] == len(bad)
    assert f"{len(bad)} unreadable images were skipped during training" in caplog.text
    for name in bad:
        assert caplog.text.count(f"skipping {folder / name}") == 1, name  # once, not every epoch

    weights = tmp_path / "small.safetensors"   # a "pretrained" encoder: a frozen random one is refused
    save_preset_encoder(weights)
    frozen = load_config("synth", ["data.image_size=32", "model.freeze_encoder=true", "data.max_image_pixels=10000000",
                                   f"model.encoder_weights={weights}"])
    prepare(records, frozen, tmp_path / "cache", show_progress=False)
    complete = json.loads((tmp_path / "cache" / "complete.json").read_text())
    assert sorted(records[int(i)].path.name for i in complete["bad"]) == bad
    assert len(FeatureCache.open(tmp_path / "cache").records()) == len(expected) - len(bad)
