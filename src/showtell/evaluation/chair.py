"""Object hallucination beside CIDEr: CHAIR (Rohrbach et al., EMNLP 2018).

n-gram metrics reward a caption that names the wrong object in the right words. CHAIR counts the
objects a caption names that are not in the picture:

    CHAIR_i = hallucinated objects / objects named      (per caption, each object counted once)
    CHAIR_s = captions naming any hallucinated object / captions
    recall  = objects in the pictures that the captions name / objects in the pictures

Objects are found by matching words against a vocabulary of object names and synonyms, longest
phrase first, so "hot dog" is a hot dog and not a dog, and "teddy bear" not a bear; plurals match
their singular. Ground truth: on COCO, the picture's instance annotations plus the objects its
reference captions name (as in the paper); on the built-in scenes, the shapes `showtell synth`
drew (exact).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import DataError
from ..vocab import tokenize

# The 80 COCO categories with the words captions use for them (singular; plurals are derived).
COCO_SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": ("person", "people", "man", "men", "woman", "women", "boy", "girl", "child", "children", "kid",
               "baby", "guy", "lady", "ladies", "player", "skier", "surfer", "skateboarder", "snowboarder",
               "adult", "teenager", "toddler", "pedestrian", "rider", "gentleman", "gentlemen"),
    "bicycle": ("bicycle", "bike", "cycle"),
    "car": ("car", "automobile", "sedan", "taxi", "cab", "van"),
    "motorcycle": ("motorcycle", "motorbike", "motor bike", "scooter", "moped"),
    "airplane": ("airplane", "plane", "jet", "aircraft", "airliner", "aeroplane"),
    "bus": ("bus",),
    "train": ("train", "locomotive", "tram"),
    "truck": ("truck", "pickup", "lorry"),
    "boat": ("boat", "ship", "sailboat", "canoe", "kayak", "yacht", "ferry"),
    "traffic light": ("traffic light", "traffic signal", "stop light", "stoplight"),
    "fire hydrant": ("fire hydrant", "hydrant"),
    "stop sign": ("stop sign",),
    "parking meter": ("parking meter", "meter"),
    "bench": ("bench",),
    "bird": ("bird", "pigeon", "seagull", "gull", "duck", "goose", "geese", "parrot", "owl"),
    "cat": ("cat", "kitten", "kitty"),
    "dog": ("dog", "puppy", "pup", "doggy"),
    "horse": ("horse", "pony", "foal"),
    "sheep": ("sheep", "lamb", "ram"),
    "cow": ("cow", "cattle", "bull", "calf", "calves", "ox", "oxen"),
    "elephant": ("elephant",),
    "bear": ("bear",),
    "zebra": ("zebra",),
    "giraffe": ("giraffe",),
    "backpack": ("backpack", "back pack", "rucksack"),
    "umbrella": ("umbrella", "parasol"),
    "handbag": ("handbag", "hand bag", "purse"),
    "tie": ("tie", "necktie", "bow tie"),
    "suitcase": ("suitcase", "suit case", "luggage"),
    "frisbee": ("frisbee",),
    "skis": ("ski", "skis"),
    "snowboard": ("snowboard",),
    "sports ball": ("ball", "soccer ball", "football", "tennis ball", "basketball", "volleyball"),
    "kite": ("kite",),
    "baseball bat": ("baseball bat", "bat"),
    "baseball glove": ("baseball glove", "glove", "mitt"),
    "skateboard": ("skateboard", "skate board"),
    "surfboard": ("surfboard", "surf board"),
    "tennis racket": ("tennis racket", "racket", "racquet"),
    "bottle": ("bottle",),
    "wine glass": ("wine glass",),
    "cup": ("cup", "mug"),
    "fork": ("fork",),
    "knife": ("knife", "knives"),
    "spoon": ("spoon",),
    "bowl": ("bowl",),
    "banana": ("banana",),
    "apple": ("apple",),
    "sandwich": ("sandwich", "burger", "hamburger"),
    "orange": ("orange",),
    "broccoli": ("broccoli",),
    "carrot": ("carrot",),
    "hot dog": ("hot dog", "hotdog"),
    "pizza": ("pizza",),
    "donut": ("donut", "doughnut"),
    "cake": ("cake", "cupcake"),
    "chair": ("chair", "stool"),
    "couch": ("couch", "sofa"),
    "potted plant": ("potted plant", "houseplant", "plant"),
    "bed": ("bed",),
    "dining table": ("dining table", "table"),
    "toilet": ("toilet", "urinal"),
    "tv": ("tv", "television"),
    "laptop": ("laptop", "computer"),
    "mouse": ("mouse", "mice"),
    "remote": ("remote", "remote control", "controller"),
    "keyboard": ("keyboard",),
    "cell phone": ("cell phone", "cellphone", "phone", "smartphone", "mobile phone"),
    "microwave": ("microwave",),
    "oven": ("oven", "stove"),
    "toaster": ("toaster",),
    "sink": ("sink",),
    "refrigerator": ("refrigerator", "fridge"),
    "book": ("book",),
    "clock": ("clock",),
    "vase": ("vase",),
    "scissors": ("scissors",),
    "teddy bear": ("teddy bear", "teddy", "stuffed animal"),
    "hair drier": ("hair drier", "hair dryer", "hairdryer", "blow dryer"),
    "toothbrush": ("toothbrush", "tooth brush"),
}
# The built-in scenes' objects (showtell.data.synthetic.SHAPES).
SYNTH_SYNONYMS: dict[str, tuple[str, ...]] = {"circle": ("circle",), "square": ("square",), "triangle": ("triangle",)}


def _plural(word: str) -> str:
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


class ObjectWords:
    """Finds the objects a caption names: {phrase (as word tuple): category}, longest first."""

    def __init__(self, synonyms: Mapping[str, Iterable[str]]):
        self.phrases: dict[tuple[str, ...], str] = {}
        for category, names in synonyms.items():
            for name in names:
                words = tuple(name.split())
                self.phrases.setdefault(words, category)
                self.phrases.setdefault(words[:-1] + (_plural(words[-1]),), category)
        self.longest = max(len(p) for p in self.phrases)

    def spans(self, words: list[str]) -> list[tuple[int, int, str]]:
        """(first word, word after, category) of each object named in tokenised `words`, in order,
        each phrase consuming its words ("hot dog" is not also "dog")."""
        found, i = [], 0
        while i < len(words):
            for n in range(min(self.longest, len(words) - i), 0, -1):
                category = self.phrases.get(tuple(words[i:i + n]))
                if category is not None:
                    found.append((i, i + n, category))
                    i += n
                    break
            else:
                i += 1
        return found

    def mentions(self, caption: str) -> list[str]:
        """Categories named, in order."""
        return [category for _, _, category in self.spans(tokenize(caption))]


def marked_words(caption: str, wrong: Iterable[str], words: ObjectWords) -> list[int]:
    """Positions in `caption.split()` of the words naming a hallucinated object (for the report;
    decoded captions are vocabulary words, so their split equals their tokens)."""
    wrong = set(wrong)
    return [j for start, end, category in words.spans(tokenize(caption)) if category in wrong for j in range(start, end)]


def chair(captions: Mapping[str, str], truth: Mapping[str, set[str]], words: ObjectWords) -> dict:
    """CHAIR_i, CHAIR_s and object recall of `captions` against the objects in each picture
    (keys without ground truth are left out); `hallucinated` lists each caption's wrong objects."""
    named = hallucinated_total = with_hallucination = truth_total = recalled = 0
    hallucinated = {}
    keys = [k for k in captions if k in truth]
    for key in keys:
        mentioned = set(words.mentions(captions[key]))
        wrong = sorted(mentioned - truth[key])
        hallucinated[key] = wrong
        named += len(mentioned)
        hallucinated_total += len(wrong)
        with_hallucination += bool(wrong)
        truth_total += len(truth[key])
        recalled += len(mentioned & truth[key])
    return {"CHAIR_i": hallucinated_total / named if named else 0.0,
            "CHAIR_s": with_hallucination / len(keys) if keys else 0.0,
            "object_recall": recalled / truth_total if truth_total else 0.0,
            "captions": len(keys), "hallucinated": hallucinated, "words": words}


def coco_objects(instances: str | Path, references: Mapping[str, Iterable[str]] | None = None,
                 words: ObjectWords | None = None) -> dict[str, set[str]]:
    """{image file name: COCO categories in it} from an instances_*.json file, plus (as in the
    paper) the objects the picture's reference captions name, if `references` ({file name:
    captions}) is given."""
    try:
        data = json.loads(Path(instances).read_text(encoding="utf-8"))
        names = {c["id"]: c["name"] for c in data["categories"]}
        files = {im["id"]: im["file_name"] for im in data["images"]}
        found: dict[str, set[str]] = {name: set() for name in files.values()}
        for annotation in data["annotations"]:
            found[files[annotation["image_id"]]].add(names[annotation["category_id"]])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"--objects {instances}: not a COCO instances file ({error.__class__.__name__}: {error})") from None
    if references:
        words = words or ObjectWords(COCO_SYNONYMS)
        for name, captions in references.items():
            if name in found:
                for caption in captions:
                    found[name].update(words.mentions(caption))
    return found


def synth_objects(dataset: str | Path) -> dict[str, set[str]]:
    """{image file name: shapes drawn} from a `showtell synth` dataset.json (empty if not one)."""
    try:
        data = json.loads(Path(dataset).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("dataset") != "synth":
        return {}
    return {im["filename"]: {o["shape"] for o in im.get("scene", {}).get("objects", [])}
            for im in data.get("images", []) if "scene" in im}
