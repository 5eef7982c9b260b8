"""COCO results files: `[{"image_id": ..., "caption": ...}]`, the exchange format of the field.

`pycocotools.coco.COCO.loadRes` and the COCO evaluation server read them; they name each picture
by the dataset's own image id, so this module only knows how to find that id:

- a record read from a COCO captions file or a Karpathy split file carries its COCO id (`cocoid`);
- a Karpathy file without COCO ids (Flickr) names pictures by `imgid`, which is the record's key;
- a CSV or JSON Lines record is named by its image as the file writes it (a relative path);
- a picture in an unlabelled folder (`caption --coco-results`) by the number in its file name:
  COCO_test2014_000000000001.jpg -> 1, 000000391895.jpg -> 391895.

No torch here: `caption --coco-results` must work where only the runtime is installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import ShowtellError
from ..fileio import write_json, written_in_place
from ..run import Run

_TRAILING_NUMBER = re.compile(r"(\d+)$")


def record_image_id(record) -> int | str:
    """The dataset's own id of an `ImageRecord` (see the module doc)."""
    if "cocoid" in record.extra:
        return record.extra["cocoid"]
    return int(record.key) if record.key.isdigit() else record.key


def image_id_from_name(path: str | Path) -> int:
    """The COCO id in a picture's file name; a name without one is a one-line error."""
    stem = Path(path).stem
    match = _TRAILING_NUMBER.search(stem)
    if not match:
        raise ShowtellError(f"--coco-results: {Path(path).name} has no COCO image id in its name "
                            "(expected a name such as COCO_val2014_000000391895.jpg)")
    return int(match.group(1))


def ids_from_names(files: Iterable[str]) -> dict[str, int]:
    """{file: COCO id} for pictures of an unlabelled folder; two files with one id are refused."""
    ids: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name in files:
        image_id = image_id_from_name(name)
        if image_id in owner and owner[image_id] != name:
            raise ShowtellError(f"--coco-results: {name} and {owner[image_id]} have the same COCO image id {image_id}")
        ids[name], owner[image_id] = image_id, name
    return ids


def results_entries(pairs: Iterable[tuple[int | str, str]]) -> list[dict]:
    return [{"image_id": image_id, "caption": caption} for image_id, caption in pairs]


def check_output_file(path: str | Path, option: str = "", runs: Iterable[Run | str | Path] = ()) -> None:
    """Refuse, before any work, an output file that cannot be written (`option` names the flag):
    a folder, a missing folder, a socket, or one of the own files of `runs` (the runs being used)."""
    path = Path(path)
    where = f"{option} {path}".strip()
    if path.is_dir():
        raise ShowtellError(f"{where}: is a folder; give a file name such as results.json")
    if not path.parent.is_dir():
        raise ShowtellError(f"{where}: the folder {path.parent} does not exist")
    for run in runs:
        if Run.of(run).owns(path):
            raise ShowtellError(f"{where}: is one of the run's own files (in {run}); give another file name, "
                                "such as results.json")
    try:
        written_in_place(path)   # a socket or block device: refused in one line
    except ShowtellError as error:
        raise ShowtellError(f"{option} {error}".strip()) from None


def write_results(path: str | Path, pairs: Iterable[tuple[int | str, str]]) -> Path:
    """A COCO results file of (image id, caption) pairs."""
    check_output_file(path)
    return write_json(path, results_entries(pairs))
