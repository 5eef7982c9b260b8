"""Annotation files in the formats people have, read into one record type.

- Karpathy split JSON (`dataset_coco.json`, `dataset_flickr8k.json`, `dataset_flickr30k.json`):
  `images[].filepath/filename/split/sentences[].raw/tokens`; `restval` counts as train.
- COCO captions JSON (`captions_train2014.json`, `captions_val2017.json`):
  `images[].id/file_name`, `annotations[].image_id/caption`. The split comes from the file
  (`--data val=captions_val2014.json`), from a Karpathy split file matched by COCO id
  (`data.karpathy_split=dataset_coco.json`), or from a seeded ratio.
- CSV or JSON Lines of `image,caption[,split]` rows, several rows per image allowed.

The format is detected from the file. Every problem is reported as one line naming the file,
the record and what is wrong.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import os
import random
import re
import string
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError
from ..fileio import FILE_LIMITS, read_bounded
from ..vocab import tokenize

SPLITS = ("train", "val", "test")


def parse_data_spec(spec: str) -> tuple[str | None, str]:
    """(split, file) of a `--data` value, 'FILE' or 'SPLIT=FILE' (the whole file is that split).
    The text is split at its first '=' only when what comes before it is a split name (train, val,
    test): 'val=a=b.json' is the file 'a=b.json' as the val split, and 'x=y.json' or 'trainset=y.json'
    is a file of that whole name with no split forced. The one parser every caller uses."""
    split, sep, path = str(spec).partition("=")
    return (split, path) if sep and split in SPLITS else (None, str(spec))


@dataclass
class ImageRecord:
    """One picture and its reference captions."""

    key: str                    # stable id: COCO image id, or the image's relative path
    path: Path                  # where the picture is
    split: str                  # train | val | test
    captions: list[str] = field(default_factory=list)        # as written
    tokens: list[list[str]] = field(default_factory=list)    # Karpathy-style tokens of each caption
    extra: dict = field(default_factory=dict)                # anything else the file says (scene, ids)


def _read_text(path: Path) -> str:
    """The file's text, read bounded by FILE_LIMITS['annotations'] (an endless /dev/zero or a 2 GB
    sparse file is refused having read at most that much, the sparse one having read nothing)."""
    try:
        return read_bounded(path, FILE_LIMITS["annotations"], "an annotation file", DataError).decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: annotation file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder; --data takes an annotation file") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text (byte {error.start})") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None


def _json_error(path: Path, error: json.JSONDecodeError) -> DataError:
    return DataError(f"{path}: not valid JSON (line {error.lineno}, column {error.colno}: {error.msg})")


def _too_deep(where) -> DataError:
    return DataError(f"{where}: values nested too deeply (arrays or objects inside one another) to be annotations")


_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass
class _Streamed:
    """Stands for a member whose elements went to a callback one by one."""
    count: int


def _stream_json(path: Path, arrays: dict) -> object:
    """The file's JSON value; when it is an object, its members named in `arrays` whose values are
    lists are decoded one element at a time, each handed to `arrays[name](element, index)`, and
    are never built whole (they map to `_Streamed`). A COCO-sized annotation file takes 0.13 GB as
    text and 1.1 GB as a parsed tree; this way the tree never exists."""
    text = _read_text(path)
    decoder = json.JSONDecoder()

    def skip(i: int) -> int:
        return _SPACE.match(text, i).end()

    def at(i: int, char: str) -> bool:
        return i < len(text) and text[i] == char

    def expect_more(i: int, closing: str) -> tuple[int, bool]:
        """After a value: (where the next one starts, whether there is one)."""
        i = skip(i)
        if at(i, ","):
            return skip(i + 1), True
        if at(i, closing):
            return i + 1, False
        raise json.JSONDecodeError("Expecting ',' delimiter", text, i)

    def stream_array(i: int, handle) -> tuple[_Streamed, int]:
        count, i = 0, skip(i + 1)
        if at(i, "]"):
            return _Streamed(0), i + 1
        more = True
        while more:
            element, i = decoder.raw_decode(text, i)
            handle(element, count)
            count += 1
            i, more = expect_more(i, "]")
        return _Streamed(count), i

    try:
        i = skip(0)
        if not at(i, "{"):
            return json.loads(text)          # not an object: nothing to stream
        members, i = {}, skip(i + 1)
        more = not at(i, "}")
        i = i if more else i + 1
        while more:
            if not at(i, '"'):
                raise json.JSONDecodeError("Expecting property name enclosed in double quotes", text, i)
            key, i = decoder.raw_decode(text, i)
            i = skip(i)
            if not at(i, ":"):
                raise json.JSONDecodeError("Expecting ':' delimiter", text, i)
            i = skip(i + 1)
            if key in arrays and at(i, "["):
                members[key], i = stream_array(i, arrays[key])
            else:
                members[key], i = decoder.raw_decode(text, i)
            i, more = expect_more(i, "}")
        if skip(i) != len(text):
            raise json.JSONDecodeError("Extra data", text, skip(i))
        return members
    except json.JSONDecodeError as error:
        raise _json_error(path, error) from None
    except RecursionError:
        raise _too_deep(path) from None


def _caption(value, where: str) -> tuple[str, list[str]]:
    if not isinstance(value, str):
        raise DataError(f"{where}: caption must be text, got {type(value).__name__}")
    tokens = tokenize(value)
    if not tokens:
        raise DataError(f"{where}: empty caption {value!r}")
    return _own(value.strip()), tokens


def _inside(root: Path, name: str, where: str, allow_absolute: bool = False) -> Path:
    """`root / name`, refused when `name` leaves the image folder: `..` past the top, or an
    absolute path (unless the user allowed those). Checked on the text, before any file is opened;
    symbolic links inside the folder are the user's own and are followed as usual."""
    if "\0" in name:
        raise DataError(f"{where}: image path {name!r} holds a NUL character")
    if os.path.isabs(name):
        if allow_absolute:
            return Path(name)
        raise DataError(f"{where}: image path {name!r} is absolute; annotation files name pictures relative to "
                        "the image folder (--images)")
    parts = Path(os.path.normpath(name)).parts
    if parts and parts[0] == "..":
        raise DataError(f"{where}: image path {name!r} leaves the image folder {root}")
    return root / name


def _split(value, where: str) -> str:
    split = "train" if value == "restval" else value
    if split not in SPLITS:
        raise DataError(f"{where}: split must be train, val, test or restval, got {value!r}")
    return SPLITS[SPLITS.index(split)]   # the constant, not the file's string (see _own)


def _own(value):
    """A copy of a parsed string or number, so that a record holds none of the parsed file's
    objects: then the memory of the whole parsed file goes back to the system once it is freed
    (one kept string pins the allocator's block of 256 kB it lives in)."""
    if type(value) is str:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "surrogatepass")
    if type(value) is int:
        return int(str(value))
    return value


class _Lowered(dict):
    """A file token -> its lower-case form ("" for a blank token), computed once per distinct token
    and shared by every caption that uses it."""

    spaced = False    # a token with white space inside was seen

    def __missing__(self, token):
        if not isinstance(token, str):
            raise TypeError(token)
        value = self[token] = " ".join(token.lower().split())
        self.spaced = self.spaced or " " in value
        return value


# a character that tokenize() keeps: neither white space nor ASCII punctuation
_WORD_CHAR = re.compile("[^\\s" + re.escape(string.punctuation) + "]")


def _karpathy_sentence(sentence, lowered: _Lowered, where) -> tuple[str, list[str]]:
    """(caption, tokens) of one `sentences[]` entry; `where()` names it in errors. The file's own
    tokens (lower-cased) are the reference tokenisation when it has them (COCO/Flickr files do);
    otherwise the raw text is tokenised. Either way the raw text must hold a word."""
    if not isinstance(sentence, dict):
        raise DataError(f"{where()}: expected an object with 'raw' and/or 'tokens'")
    raw, file_tokens = sentence.get("raw"), sentence.get("tokens")
    if raw is None and isinstance(file_tokens, list):
        raw = " ".join(map(str, file_tokens))
    if isinstance(file_tokens, list) and isinstance(raw, str) and _WORD_CHAR.search(raw):
        try:
            toks = list(map(lowered.__getitem__, file_tokens))
        except TypeError:   # a token that is not text: the raw text decides
            return _caption(raw, where())
        if "" in toks:
            toks = [t for t in toks if t]
        if lowered.spaced:   # a token holding white space is several words (decoding joins words with spaces)
            toks = [piece for t in toks for piece in t.split()]
        return _own(raw.strip()), toks or tokenize(raw)
    return _caption(raw, where())


class _KarpathyReader:
    """Records of a Karpathy split file, one `images[]` element at a time."""

    def __init__(self, path: Path, images_dir: Path, allow_absolute: bool = False):
        self.path, self.images_dir, self.allow_absolute = path, images_dir, allow_absolute
        self.records: list[ImageRecord] = []
        self.seen_keys: dict[str, int] = {}
        self.seen_files: dict[str, int] = {}
        self.lowered = _Lowered()   # one string object per distinct token: 6.5M tokens hold 25k strings at COCO size

    def image(self, item, i: int) -> None:
        where = f"{self.path}: images[{i}]"
        if not isinstance(item, dict):
            raise DataError(f"{where}: expected an object")
        filename = item.get("filename")
        if not isinstance(filename, str) or not filename:
            raise DataError(f"{where}: missing 'filename'")
        folder = item.get("filepath", "")
        if not isinstance(folder, str):
            raise DataError(f"{where}: 'filepath' must be text")
        sentences = item.get("sentences")
        if not isinstance(sentences, list) or not sentences:
            raise DataError(f"{where} ({filename}): missing or empty 'sentences'")
        captions, tokens = [], []
        for k, sentence in enumerate(sentences):
            caption, toks = _karpathy_sentence(sentence, self.lowered, lambda where=where, k=k: f"{where}.sentences[{k}]")
            captions.append(caption)
            tokens.append(toks)
        key = item.get("cocoid", item.get("imgid"))
        key = str(key) if key is not None else f"{folder}/{filename}".strip("/")
        location = f"{folder}/{filename}".strip("/")
        if key in self.seen_keys:
            raise DataError(f"{where}: duplicate image id {key} (also images[{self.seen_keys[key]}])")
        if location in self.seen_files:
            raise DataError(f"{where}: {location} is listed twice (also images[{self.seen_files[location]}])")
        self.seen_keys[key], self.seen_files[location] = i, i
        extra = {k: _own(item[k]) for k in ("scene", "cocoid", "imgid") if k in item}
        location = _inside(self.images_dir, os.path.join(folder, filename), where, self.allow_absolute)
        self.records.append(ImageRecord(key, location, _split(item.get("split"), where), captions, tokens, extra))

    def finish(self) -> list[ImageRecord]:
        return self.records


def _coco_folder(path: Path, file_name: str) -> str | None:
    """COCO images live in folders named after the file's set: COCO_val2014_000..jpg -> val2014."""
    if file_name.startswith("COCO_") and file_name.count("_") >= 2:
        return file_name.split("_")[1]
    stem = path.stem  # captions_val2017 -> val2017
    return stem.split("_", 1)[1] if "_" in stem else None


class _CocoReader:
    """Records of a COCO captions file, one `images[]` or `annotations[]` element at a time
    (annotations listed before their images wait until the images are read)."""

    def __init__(self, path: Path, images_dir: Path, split: str | None, allow_absolute: bool = False):
        self.path, self.images_dir, self.split, self.allow_absolute = path, images_dir, split, allow_absolute
        self.by_id: dict[int, ImageRecord] = {}
        self.seen_files: dict[str, int] = {}
        self.waiting: list[tuple[object, int]] = []

    def image(self, item, i: int) -> None:
        where = f"{self.path}: images[{i}]"
        if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("file_name"), str):
            raise DataError(f"{where}: needs 'id' and 'file_name'")
        image_id, name = item["id"], item["file_name"]
        if not isinstance(image_id, (int, str)) or isinstance(image_id, bool):
            raise DataError(f"{where}: 'id' must be a number or text")
        if image_id in self.by_id:
            raise DataError(f"{where}: duplicate image id {image_id}")
        if name in self.seen_files:
            raise DataError(f"{where}: {name} is listed twice (ids {self.seen_files[name]} and {image_id})")
        self.seen_files[name] = image_id
        location = _inside(self.images_dir, name, where, self.allow_absolute)
        folder = _coco_folder(self.path, name)
        if not location.exists() and folder and not os.path.isabs(name) and (self.images_dir / folder / name).exists():
            location = self.images_dir / folder / name
        self.by_id[image_id] = ImageRecord(str(image_id), location, self.split or "", extra={"cocoid": image_id})

    def annotation(self, ann, i: int, last_chance: bool = False) -> None:
        where = f"{self.path}: annotations[{i}]"
        if not isinstance(ann, dict) or "image_id" not in ann or "caption" not in ann:
            raise DataError(f"{where}: needs 'image_id' and 'caption'")
        record = self.by_id.get(ann["image_id"]) if isinstance(ann["image_id"], (int, float, str)) else None
        if record is None:
            if not last_chance:
                self.waiting.append((ann, i))
                return
            raise DataError(f"{where}: image_id {ann['image_id']!r} is not in 'images'")
        caption, tokens = _caption(ann["caption"], where)
        record.captions.append(caption)
        record.tokens.append(tokens)

    def finish(self) -> list[ImageRecord]:
        for ann, i in self.waiting:
            self.annotation(ann, i, last_chance=True)
        records = [r for r in self.by_id.values() if r.captions]
        if not records:
            raise DataError(f"{self.path}: no image has a caption")
        return records


def _table_rows(path: Path) -> list[tuple[str, dict]]:
    """(where, row) pairs from a CSV with a header or a JSON Lines file."""
    text = _read_text(path)
    rows = []
    if path.suffix.lower() == ".jsonl":
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}: line {n}: not valid JSON ({error.msg})") from None
            except RecursionError:
                raise _too_deep(f"{path}: line {n}") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected an object with 'image' and 'caption'")
            rows.append((f"{path}: line {n}", row))
        return rows
    # the whole text to the reader (not line by line): a quoted caption may hold a line break
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames or not {"image", "caption"} <= {f.strip().lower() for f in reader.fieldnames}:
            raise DataError(f"{path}: a CSV file needs a header with 'image' and 'caption' columns")
        while True:
            start = reader.line_num + 1  # a record may span lines: name the line it starts on
            try:
                row = next(reader)
            except StopIteration:
                break
            rows.append((f"{path}: line {start}", {(k or "").strip().lower(): v for k, v in row.items()}))
    except csv.Error as error:
        raise DataError(f"{path}: line {reader.line_num}: not valid CSV ({error})") from None
    return rows


def read_table(path: Path, images_dir: Path, allow_absolute: bool = False) -> list[ImageRecord]:
    by_image: dict[str, ImageRecord] = {}
    for where, row in _table_rows(path):
        image = row.get("image")
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{where}: missing 'image'")
        caption, tokens = _caption(row.get("caption"), where)
        split = row.get("split")
        split = _split(split.strip().lower(), where) if isinstance(split, str) and split.strip() else ""
        if image not in by_image:
            by_image[image] = ImageRecord(image, _inside(images_dir, image, where, allow_absolute), split)
        record = by_image[image]
        if split and record.split and split != record.split:
            raise DataError(f"{where}: {image} is given split {split!r} here and {record.split!r} before")
        record.split = record.split or split
        record.captions.append(caption)
        record.tokens.append(tokens)
    if not by_image:
        raise DataError(f"{path}: no rows")
    return list(by_image.values())


def assign_ratio_splits(records: list[ImageRecord], ratio: str, seed: int) -> None:
    """Give records without a split one at random, in the proportions 'train,val,test'."""
    todo = sorted((r for r in records if not r.split), key=lambda r: r.key)
    if not todo:
        return
    fractions = [float(p) for p in ratio.split(",")]
    random.Random(seed).shuffle(todo)
    n_train = round(fractions[0] * len(todo))
    n_val = round(fractions[1] * len(todo))
    for i, record in enumerate(todo):
        record.split = "train" if i < n_train else "val" if i < n_train + n_val else "test"


def apply_karpathy_split(records: list[ImageRecord], split_file: Path) -> list[ImageRecord]:
    """Splits for COCO-format records from Karpathy's file, matched by COCO image id; images
    that the split file does not list are left out, as in the papers that use it."""
    splits = {}

    def image(item, i: int) -> None:
        if isinstance(item, dict) and "cocoid" in item:
            splits[str(item["cocoid"])] = _split(item.get("split"), f"{split_file}: images[{i}]")

    if _JsonAnnotations(split_file, image).read() != "karpathy":
        raise DataError(f"{split_file}: data.karpathy_split must be a Karpathy split JSON (dataset_coco.json)")
    if not splits:
        raise DataError(f"{split_file}: no image has a 'cocoid' to match COCO ids against")
    kept = [r for r in records if r.key in splits]
    for record in kept:
        record.split = splits[record.key]
    return kept


UNRECOGNISED = ("unrecognised annotation format (expected a COCO captions JSON, a Karpathy split JSON, "
                "a CSV with image,caption columns or a JSON Lines file)")


class _JsonAnnotations:
    """A COCO or Karpathy JSON file read element by element: the first image object tells which
    format it is (Karpathy's have 'filename'/'sentences', COCO's 'file_name'), and images go to
    `karpathy_image` or to `coco` as they are decoded. Images before the first such object (none
    in a real file) wait; in a file where none tells, 'annotations' means COCO, as it always did."""

    def __init__(self, path: Path, karpathy_image=None, coco: _CocoReader | None = None):
        self.path, self.karpathy_image, self.coco = path, karpathy_image, coco
        self.kind: str | None = None
        self.waiting: list[tuple[object, int]] = []

    def image(self, item, i: int) -> None:
        if self.kind is None:
            if not (isinstance(item, dict) and {"filename", "sentences", "file_name"} & item.keys()):
                self.waiting.append((item, i))
                return
            self.decide("karpathy" if {"filename", "sentences"} & item.keys() else "coco")
        self._to_reader(item, i)

    def decide(self, kind: str) -> None:
        self.kind = kind
        for item, i in self.waiting:
            self._to_reader(item, i)
        self.waiting = []

    def _to_reader(self, item, i: int) -> None:
        if self.kind == "karpathy":
            if self.karpathy_image:
                self.karpathy_image(item, i)
        elif self.coco is not None:
            self.coco.image(item, i)

    def annotation(self, item, i: int) -> None:
        if self.coco is not None:
            self.coco.annotation(item, i)

    def read(self) -> str:
        """'karpathy' or 'coco', once every element went to its reader."""
        data = _stream_json(self.path, {"images": self.image, "annotations": self.annotation})
        if not isinstance(data, dict) or not isinstance(data.get("images"), _Streamed):
            raise DataError(f"{self.path}: {UNRECOGNISED}")
        if self.kind is None:
            if "annotations" not in data:
                raise DataError(f"{self.path}: {UNRECOGNISED}")
            self.decide("coco")
        if self.kind == "coco" and not isinstance(data.get("annotations"), _Streamed):
            raise DataError(f"{self.path}: a COCO captions file needs 'images' and 'annotations' lists")
        return self.kind


@contextmanager
def _collector_paused():
    """Python's cycle collector off while a file becomes records: parsing makes millions of objects
    and no cycles, and each full collection would walk all of them (a third of the time at COCO size)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def read_annotations(spec: str, images_dir: str | Path | None, split_ratio: str = "0.9,0.05,0.05",
                     split_seed: int = 0, karpathy_split: str = "", allow_absolute: bool = False) -> list[ImageRecord]:
    """Records from one `--data` value: 'FILE' or 'SPLIT=FILE' (the whole file is that split).
    Image paths in the file must stay inside the image folder; absolute ones only with `allow_absolute`."""
    forced, spec = parse_data_spec(spec)
    path = Path(spec)
    root = Path(images_dir) if images_dir else path.parent
    if not path.exists():
        raise DataError(f"{path}: annotation file not found")
    if images_dir and not root.is_dir():
        raise DataError(f"{root}: image folder not found")
    with _collector_paused():
        if path.suffix.lower() in (".csv", ".jsonl"):
            records = read_table(path, root, allow_absolute)
        else:
            karpathy = _KarpathyReader(path, root, allow_absolute)
            coco = _CocoReader(path, root, forced, allow_absolute)
            if _JsonAnnotations(path, karpathy.image, coco).read() == "karpathy":
                records = karpathy.finish()
            else:
                records = coco.finish()
                if karpathy_split and not forced:
                    records = apply_karpathy_split(records, Path(karpathy_split))
    if forced:
        for record in records:
            record.split = forced
    assign_ratio_splits(records, split_ratio, split_seed)
    return records


def merge(record_lists: list[list[ImageRecord]], sources: list[str]) -> list[ImageRecord]:
    """Records of several files. The same picture twice is an error, however its path is written
    (`a.png`, `sub/../a.png`, a symbolic link): compared as resolved paths, since a picture in two
    splits would put test pictures into training."""
    merged, first = [], {}
    for records, source in zip(record_lists, sources):
        for record in records:
            where = os.path.realpath(record.path)
            if where in first:
                other, other_source = first[where]
                splits = f" (splits {other.split or 'unset'} and {record.split or 'unset'})" if other.split != record.split else ""
                raise DataError(f"{source}: {record.key} is the same picture as {other.key} in {other_source}{splits}; "
                                "list each picture once")
            first[where] = (record, source)
            merged.append(record)
    return merged


def check_images(records: list[ImageRecord], skip_missing: bool, source: str) -> tuple[list[ImageRecord], int]:
    """Drop-or-refuse records whose picture is missing; returns (records kept, number missing)."""
    missing = [r for r in records if not r.path.is_file()]
    if missing and not skip_missing:
        raise DataError(f"{source}: {len(missing)} of {len(records)} listed images are missing "
                        f"(first: {missing[0].path}); check --images or set data.skip_missing_images=true")
    lost = {id(r) for r in missing}
    return [r for r in records if id(r) not in lost], len(missing)


def load_dataset(specs: list[str], images_dir: str | Path | None, data_config) -> list[ImageRecord]:
    """Records of one or more `--data` values, checked: pictures present, no picture twice."""
    import logging

    allow_absolute = data_config.allow_absolute_paths
    lists = [read_annotations(spec, images_dir, data_config.split_ratio, data_config.split_seed,
                              data_config.karpathy_split, allow_absolute) for spec in specs]
    records = merge(lists, specs)
    records, missing = check_images(records, data_config.skip_missing_images, ", ".join(specs))
    if missing:
        logging.getLogger("showtell").warning("%d listed images are missing and were left out "
                                              "(data.skip_missing_images=true)", missing)
    if not records:
        raise DataError(f"{', '.join(specs)}: no usable images")
    return records
