"""The built-in dataset: scenes of one to three coloured shapes, each with five different captions.

It stands in for MS COCO where nothing can be downloaded. Every caption is fully determined by
the picture, but the five references of one picture are worded differently, as five people
would: some mention sizes, some the background, some positions or counts. A captioner has to get
colours bound to the right shapes, count, and tell left from right and top from bottom.

Output: `OUT/dataset.json` in Karpathy's split format plus `OUT/images/NNNNNN.png`, identical for
identical seeds. Each image record also carries its `scene` (objects, background, relation),
which the format's readers ignore and the analysis scripts use.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from ..fileio import atomic_write_text
from ..vocab import tokenize

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 230), "yellow": (235, 205, 30)}
BACKGROUNDS = {"white": (240, 240, 240), "black": (25, 25, 25), "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": (0.07, 0.09), "large": (0.15, 0.18)}  # radius as a fraction of the image side
NUMBERS = {1: "one", 2: "two", 3: "three"}


@dataclass
class Shape:
    shape: str
    colour: str
    size: str
    x: float  # centre, fractions of the image side
    y: float
    r: float

    def noun(self, with_size: bool) -> str:
        words = ([self.size] if with_size else []) + [self.colour, self.shape]
        return " ".join(words)


def plural(shape: str) -> str:
    return shape + "s"


def _draw(shape: Shape, draw: ImageDraw.ImageDraw, side: int, fill) -> None:
    cx, cy, r = shape.x * side, shape.y * side, shape.r * side
    if shape.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape.shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fill)


def _jitter(rgb, rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)


def _place(rng: random.Random, n: int) -> tuple[list[Shape], str]:
    """Random shapes with unambiguous layout: 2 objects side by side or one above the other,
    3 objects in a left-to-right row; never overlapping."""
    relation = "single" if n == 1 else ("row" if n == 3 else rng.choice(["horizontal", "vertical"]))
    while True:
        shapes = []
        for _ in range(n):
            size = rng.choice(list(SIZES))
            r = rng.uniform(*SIZES[size])
            shapes.append(Shape(rng.choice(SHAPES), rng.choice(list(COLOURS)), size,
                                rng.uniform(r + 0.02, 0.98 - r), rng.uniform(r + 0.02, 0.98 - r), r))
        gaps_ok = all((a.x - b.x) ** 2 + (a.y - b.y) ** 2 > (a.r + b.r + 0.04) ** 2
                      for i, a in enumerate(shapes) for b in shapes[i + 1:])
        if not gaps_ok:
            continue
        if relation in ("horizontal", "row"):
            shapes.sort(key=lambda s: s.x)
            steps = [(b.x - a.x, abs(b.y - a.y)) for a, b in zip(shapes, shapes[1:])]
            if all(dx > a.r + b.r and dy < 0.5 * dx for (dx, dy), a, b in zip(steps, shapes, shapes[1:])):
                return shapes, relation
        elif relation == "vertical":
            shapes.sort(key=lambda s: s.y)
            a, b = shapes
            dy, dx = b.y - a.y, abs(b.x - a.x)
            if dy > a.r + b.r and dx < 0.5 * dy:
                return shapes, relation
        else:
            return shapes, relation


def _where(s: Shape) -> str:
    """Where a lone shape is: 'in the top left corner', 'near the bottom', 'in the middle'."""
    horizontal = "left" if s.x < 0.38 else "right" if s.x > 0.62 else ""
    vertical = "top" if s.y < 0.38 else "bottom" if s.y > 0.62 else ""
    if horizontal and vertical:
        return f"in the {vertical} {horizontal} corner"
    if vertical:
        return f"near the {vertical}"
    if horizontal:
        return f"on the {horizontal}"
    return "in the middle"


def _group_phrase(shapes: list[Shape]) -> str:
    """Counted groups: 'two red circles and a blue square'."""
    groups: dict[tuple[str, str], int] = {}
    for s in shapes:
        groups[(s.colour, s.shape)] = groups.get((s.colour, s.shape), 0) + 1
    parts = [f"{NUMBERS[c]} {col} {plural(sh)}" if c > 1 else f"a {col} {sh}" for (col, sh), c in groups.items()]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _captions_one(s: Shape, bg: str, rng: random.Random) -> list[str]:
    sz = lambda: rng.random() < 0.5  # noqa: E731 - whether one caption mentions the size
    return [
        f"a {s.noun(True)}",
        f"a {s.noun(sz())} on a {bg} background",
        f"a {s.noun(sz())} {_where(s)}",
        f"there is a {s.noun(sz())} {_where(s)}",
        f"a single {s.noun(sz())} on a {bg} background",
        f"one {s.noun(True)} {_where(s)}",
        f"a {bg} background with a {s.noun(sz())}",
        f"a picture of one {s.noun(sz())}",
    ]


def _captions_two(a: Shape, b: Shape, relation: str, bg: str, rng: random.Random) -> list[str]:
    sz = lambda: rng.random() < 0.5  # noqa: E731
    if (a.colour, a.shape) == (b.colour, b.shape):
        arrangement = "side by side" if relation == "horizontal" else "one above the other"
        first = "to the left of" if relation == "horizontal" else "above"
        captions = [
            f"two {a.colour} {plural(a.shape)}",
            f"two {a.colour} {plural(a.shape)} {arrangement}",
            f"a pair of {a.colour} {plural(a.shape)} on a {bg} background",
            f"two {plural(a.shape)} {arrangement}, both {a.colour}",
            f"two {a.colour} {plural(a.shape)} on a {bg} background",
        ]
        if a.size != b.size:
            captions.append(f"a {a.noun(True)} {first} a {b.noun(True)}")
            captions.append(f"a small and a large {a.colour} {a.shape}")
        return captions
    if relation == "horizontal":
        return [
            f"a {a.noun(sz())} to the left of a {b.noun(sz())}",
            f"a {b.noun(sz())} to the right of a {a.noun(sz())}",
            f"a {a.noun(sz())} and a {b.noun(sz())}",
            f"a {a.noun(sz())} next to a {b.noun(sz())} on a {bg} background",
            f"two shapes: a {a.noun(sz())} and a {b.noun(sz())}",
            f"a {a.noun(sz())} on the left and a {b.noun(sz())} on the right",
        ]
    return [
        f"a {a.noun(sz())} above a {b.noun(sz())}",
        f"a {b.noun(sz())} below a {a.noun(sz())}",
        f"a {a.noun(sz())} and a {b.noun(sz())}",
        f"a {a.noun(sz())} at the top and a {b.noun(sz())} at the bottom",
        f"two shapes: a {a.noun(sz())} above a {b.noun(sz())}",
        f"a {b.noun(sz())} under a {a.noun(sz())} on a {bg} background",
    ]


def _captions_three(shapes: list[Shape], bg: str, rng: random.Random) -> list[str]:
    sz = lambda: rng.random() < 0.4  # noqa: E731
    a, b, c = shapes
    kinds = {(s.colour, s.shape) for s in shapes}
    if len(kinds) == 1:
        return [
            f"three {a.colour} {plural(a.shape)}",
            f"three {a.colour} {plural(a.shape)} in a row",
            f"a row of three {a.colour} {plural(a.shape)}",
            f"three {plural(a.shape)} on a {bg} background, all {a.colour}",
            f"three {a.colour} {plural(a.shape)} on a {bg} background",
        ]
    listing = f"a {a.noun(sz())}, a {b.noun(sz())} and a {c.noun(sz())}"
    return [
        _group_phrase(shapes),
        f"{listing} from left to right",
        f"three shapes: {_group_phrase(shapes)}",
        f"a {a.noun(sz())}, a {b.noun(sz())} and a {c.noun(sz())} in a row",
        f"{_group_phrase(shapes)} on a {bg} background",
        f"a {a.noun(sz())} to the left of a {b.noun(sz())} and a {c.noun(sz())}",
        f"three shapes in a row on a {bg} background: {listing}",
    ]


def _humanise(caption: str, rng: random.Random) -> str:
    """People capitalise and punctuate inconsistently; the tokeniser must cope."""
    if rng.random() < 0.5:
        caption = caption[0].upper() + caption[1:]
    if rng.random() < 0.4:
        caption += "."
    return caption


def make_scene(rng: random.Random, side: int) -> tuple[Image.Image, list[str], dict]:
    """One picture, its five different reference captions and its scene description."""
    n = rng.choices([1, 2, 3], weights=[0.3, 0.45, 0.25])[0]
    bg = rng.choice(list(BACKGROUNDS))
    shapes, relation = _place(rng, n)
    # no shape the colour of the background would be invisible; yellow on white is hard but fine
    image = Image.new("RGB", (side, side), _jitter(BACKGROUNDS[bg], rng, 12))
    draw = ImageDraw.Draw(image)
    for s in shapes:
        _draw(s, draw, side, _jitter(COLOURS[s.colour], rng, 25))
    if n == 1:
        pool = _captions_one(shapes[0], bg, rng)
    elif n == 2:
        pool = _captions_two(shapes[0], shapes[1], relation, bg, rng)
    else:
        pool = _captions_three(shapes, bg, rng)
    pool = list(dict.fromkeys(pool))  # distinct wordings only
    captions = [_humanise(c, rng) for c in rng.sample(pool, 5)]
    scene = {"background": bg, "relation": relation,
             "objects": [{"shape": s.shape, "colour": s.colour, "size": s.size,
                          "x": round(s.x, 4), "y": round(s.y, 4)} for s in shapes]}
    return image, captions, scene


def split_of(index: int, n: int) -> str:
    """80% train, 10% val, 10% test, in index order (the scenes are i.i.d.)."""
    if index < round(0.8 * n):
        return "train"
    return "val" if index < round(0.9 * n) else "test"


def write_dataset(out_dir: str | Path, n_images: int = 3000, seed: int = 0, side: int = 128,
                  progress=None) -> Path:
    """Draw `n_images` scenes into OUT/images and write OUT/dataset.json; returns the JSON path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n_images):
        image, captions, scene = make_scene(rng, side)
        filename = f"{i:06d}.png"
        image.save(out / "images" / filename, format="PNG")
        records.append({
            "filepath": "images", "filename": filename, "imgid": i, "cocoid": i,
            "split": split_of(i, n_images),
            "sentids": list(range(5 * i, 5 * i + 5)),
            "sentences": [{"raw": c, "tokens": tokenize(c), "imgid": i, "sentid": 5 * i + k}
                          for k, c in enumerate(captions)],
            "scene": scene,
        })
        if progress:
            progress(1)
    path = out / "dataset.json"
    atomic_write_text(path, json.dumps({"dataset": "synth", "seed": seed, "images": records}, indent=1) + "\n")
    return path
