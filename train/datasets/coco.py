"""COCO Camera Traps JSON: images (with ``seq_id``, ``location``, ``datetime``), annotations, categories."""

from __future__ import annotations

from pathlib import Path

from train.datasets.inventory import DatasetError, Inventory, check_bbox, parse_time, read_json
from train.records import Record


def read_coco_camera_traps(json_path: Path | str, image_root: Path | str | None = None) -> Inventory:
    """Read a COCO (Camera Traps) file: one record per boxed annotation, one per image for the rest.

    Annotations without ``bbox`` are image-level labels and merge into one record per image
    (multi-labelled when they differ). Images with no annotation at all are reported as
    ``unannotated``, never assumed empty: an empty image is one annotated with an "empty" category.

    Raises:
        DatasetError: unreadable JSON, a missing section, an unknown or repeated image/category id or a
            bad box.
    """
    json_path = Path(json_path)
    root = Path(image_root) if image_root is not None else json_path.parent
    data = _load(json_path)
    categories = {key: str(c["name"]) for key, (_, c) in _unique_ids(json_path, "categories", data["categories"]).items()}
    images = _unique_ids(json_path, "images", data["images"])
    per_image: dict = {}
    for i, annotation in enumerate(data["annotations"]):
        where = f"annotations[{i}]"
        if annotation.get("image_id") not in images:
            raise DatasetError(json_path, where, f"unknown image_id {annotation.get('image_id')!r}")
        if annotation.get("category_id") not in categories:
            raise DatasetError(json_path, where, f"unknown category_id {annotation.get('category_id')!r}")
        per_image.setdefault(annotation["image_id"], []).append((where, annotation))
    inventory = Inventory()
    for image_id, (where, image) in images.items():
        _add_image(inventory, json_path, root, where, image, per_image.get(image_id, []), categories)
    return inventory


def _load(json_path: Path) -> dict:
    data = read_json(json_path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(json_path, key, "missing or not a list")
    return data


def _unique_ids(json_path: Path, section: str, entries: list) -> dict:
    """``{id: (where, entry)}`` of a section; an id used twice is refused: the annotations of one
    image (or the name of one category) would silently become another's."""
    by_id: dict = {}
    for i, entry in enumerate(entries):
        where = f"{section}[{i}]"
        if "id" not in entry:
            raise DatasetError(json_path, where, "no id")
        if entry["id"] in by_id:
            raise DatasetError(json_path, where, f"id {entry['id']!r} is already {by_id[entry['id']][0]}'s: "
                               "each entry needs its own id")
        by_id[entry["id"]] = (where, entry)
    return by_id


def _add_image(inventory: Inventory, json_path: Path, root: Path, where: str, image: dict, annotations: list,
               categories: dict) -> None:
    if "file_name" not in image:
        raise DatasetError(json_path, where, "no file_name")
    path = root / image["file_name"]
    if not annotations:
        inventory.report("unannotated", json_path, where, str(path))
        return
    common = {
        "location": _text(image.get("location")),
        "event": _text(image.get("seq_id")),
        "time": parse_time(image.get("datetime"), json_path, where),
        "source": "coco",
    }
    timed = {"time_source": "column"} if common["time"] is not None else {}
    image_level = []
    for entry, annotation in annotations:
        label = categories[annotation["category_id"]]
        if annotation.get("bbox"):
            box = _normalise(annotation["bbox"], image, json_path, entry)
            extra = {**timed, "annotation": annotation.get("id")}
            inventory.add(Record(path, (label,), bbox=box, extra=extra, **common), json_path, entry)
        elif label not in image_level:
            image_level.append(label)
    if image_level:
        inventory.add(Record(path, tuple(image_level), extra=timed, **common), json_path, where)


def _normalise(bbox, image: dict, json_path: Path, where: str) -> tuple[float, float, float, float]:
    width, height = image.get("width"), image.get("height")
    if not width or not height:
        raise DatasetError(json_path, where, "box given but its image has no width/height")
    if len(bbox) != 4:
        raise DatasetError(json_path, where, f"bbox {bbox} is not [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    return check_bbox((x / width, y / height, w / width, h / height), json_path, where)


def _text(value) -> str | None:
    return None if value is None or value == "" else str(value)
