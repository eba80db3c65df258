"""YOLO: ``images/…/<stem>.<ext>`` beside ``labels/…/<stem>.txt``; one ``class cx cy w h`` line per box.

Class names come from ``classes.txt`` (line k names class k) or a ``data.yaml`` / ``dataset.yaml``
with ``names`` (a list, or a mapping of index to name).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml

from common.files import files_under
from train.datasets.inventory import IMAGE_EXTENSIONS, DatasetError, Inventory, check_bbox, read_text
from train.records import Record

EmptyFiles = Literal["empty", "unlabelled"]


def read_class_names(root: Path) -> list[str]:
    """The class names of a YOLO dataset, index = class id.

    Raises:
        DatasetError: no ``classes.txt`` nor ``data.yaml``/``dataset.yaml`` with ``names``.
    """
    classes = root / "classes.txt"
    if classes.is_file():
        return [line.strip() for line in read_text(classes).splitlines() if line.strip()]
    for name in ("data.yaml", "dataset.yaml"):
        path = root / name
        if path.is_file():
            try:
                document = yaml.safe_load(read_text(path)) or {}
            except yaml.YAMLError as err:
                mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
                raise DatasetError(path, f"line {mark.line + 1}" if mark else "file",
                                   f"not YAML{f': {problem}' if problem else ''}") from None
            names = document.get("names") if isinstance(document, dict) else None
            if isinstance(names, dict):
                # index: name for every class id from 0 on ("0" quoted as well); a gap would shift every later
                # name onto the wrong id, and text keys sorted "10" before "2"
                names = {int(k) if isinstance(k, str) and k.isdecimal() else k: v for k, v in names.items()}
                if sorted(k for k in names if type(k) is int) != list(range(len(names))):
                    raise DatasetError(path, "names", f"index: name for each class id 0 to {len(names) - 1}, "
                                                      f"got ids {sorted(map(str, names))}")
                return [str(names[k]) for k in range(len(names))]
            if isinstance(names, list):
                return [str(n) for n in names]
            raise DatasetError(path, "names", "a list of class names, or index: name")
    raise DatasetError(root, "classes.txt", "not found (nor data.yaml / dataset.yaml with names)")


def read_yolo(root: Path | str, *, images: str = "images", labels: str = "labels",
              empty_files: EmptyFiles = "empty", empty_label: str = "empty",
              event_pattern: str | None = None) -> Inventory:
    """Read a YOLO box dataset: one record per box, normalised ``[x, y, w, h]``.

    Args:
        root: the folder holding ``images/``, ``labels/`` and the class names.
        images, labels: their folder names (the same sub-folders and stems on both sides).
        empty_files: what an empty label file means: ``empty`` (YOLO's convention: an image with
            no object, one ``empty_label`` record) or ``unlabelled`` (the source just has no box,
            as in Missouri Camera Traps: reported, not used).
        empty_label: the label of a confirmed empty image.
        event_pattern: a regular expression whose first group, searched in the file name, is the
            image's sequence (e.g. ``^(SEQ\\d+)_`` for ``SEQ75520_IMG_0001.JPG``), for leak-free splits.

    An image without a label file is reported ``unannotated``; a label file without its image
    ``missing``.

    Raises:
        DatasetError: no class names, a line that is not ``class cx cy w h``, an unknown class, a
            box outside the image (each naming the file and line).
    """
    root = Path(root)
    names = read_class_names(root)
    image_root, label_root = root / images, root / labels
    if not image_root.is_dir():
        raise DatasetError(root, f"{images}/", "not a folder")
    pattern = _event_pattern(root, event_pattern)
    inventory = Inventory()
    stems = {}
    for image in (p for p in files_under(image_root) if p.suffix.lower() in IMAGE_EXTENSIONS):
        relative = image.relative_to(image_root).with_suffix("")
        stems[relative] = image
        label_file = label_root / relative.with_suffix(".txt")
        if not label_file.is_file():
            inventory.report("unannotated", label_root, str(relative.with_suffix(".txt")), str(image))
            continue
        event = _event(pattern, image.name)
        _read_labels(inventory, label_file, image, names, empty_files, empty_label, event)
    for label_file in (p for p in files_under(label_root) if p.suffix == ".txt"):
        if label_file.relative_to(label_root).with_suffix("") not in stems:
            inventory.report("missing", label_file, "image", str(image_root / label_file.relative_to(label_root)))
    return inventory


def _event_pattern(root: Path, text: str | None) -> re.Pattern[str] | None:
    """``event_pattern`` compiled, or a DatasetError: not a regex, or no group to take the sequence from (the
    example's parentheses dropped, ``^SEQ\\d+_``, was an IndexError once a file name matched)."""
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as err:
        raise DatasetError(root, "event_pattern", f"{text!r} is not a regular expression: {err}") from None
    if pattern.groups < 1:
        raise DatasetError(root, "event_pattern", f"{text!r} has no group: put ( ) around the sequence, "
                                                  "e.g. '^(SEQ\\d+)_'")
    return pattern


def _event(pattern: re.Pattern[str] | None, name: str) -> str | None:
    match = pattern.search(name) if pattern else None
    return match.group(1) if match else None


def _read_labels(inventory: Inventory, label_file: Path, image: Path, names: list[str], empty_files: EmptyFiles,
                 empty_label: str, event: str | None) -> None:
    lines = [(n, line.split()) for n, line in enumerate(read_text(label_file).splitlines(), 1)
             if line.strip()]
    if not lines:
        if empty_files == "empty":
            inventory.add(Record(image, (empty_label,), event=event, source="yolo"), label_file, "file")
        else:
            inventory.report("unlabelled", label_file, "file", str(image))
        return
    for n, fields in lines:
        label, box = _box(fields, names, label_file, f"line {n}")
        inventory.add(Record(image, (label,), bbox=box, event=event, source="yolo"), label_file, f"line {n}")


def _box(fields: list[str], names: list[str], file: Path, entry: str) -> tuple[str, tuple[float, float, float, float]]:
    if len(fields) != 5:
        raise DatasetError(file, entry, f"expected 'class cx cy w h', got {len(fields)} fields")
    try:
        class_id = int(fields[0])
        cx, cy, w, h = (float(v) for v in fields[1:])
    except ValueError:
        raise DatasetError(file, entry, f"not numbers: {' '.join(fields)}") from None
    if not 0 <= class_id < len(names):
        raise DatasetError(file, entry, f"class {class_id} is not in the {len(names)} class names")
    box = check_bbox((cx - w / 2, cy - h / 2, w, h), file, entry)
    return names[class_id], box
