"""MegaDetector batch output (format 1.x): detections above a threshold become one record per box."""

from __future__ import annotations

from pathlib import Path

from train.datasets.inventory import DatasetError, Inventory, check_bbox, read_json
from train.records import Record


def read_megadetector(json_path: Path | str, image_root: Path | str | None = None, *, threshold: float,
                      category_labels: dict[str, str] | None = None, empty_label: str | None = "empty") -> Inventory:
    """Read MegaDetector results; each box (``conf >= threshold``) is a record to crop later.

    The label is the box's top classification when the file has classifications, else the
    detection category name (``animal``, ``person``, ``vehicle``), renamed by ``category_labels``.

    Args:
        json_path: the MD results file.
        image_root: folder the ``file`` entries are relative to (default: the JSON's folder).
        threshold: detection confidence a box needs.
        category_labels: detection category name → label (e.g. ``{"person": "human"}``).
        empty_label: label of an image-level record for images without a box above threshold;
            None reports them as ``unlabelled`` instead.

    Raises:
        DatasetError: unreadable file, bad threshold, unknown category, malformed detection.
    """
    json_path = Path(json_path)
    if not 0.0 <= threshold <= 1.0:
        raise DatasetError(json_path, "threshold", f"{threshold} is not in [0, 1]")
    root = Path(image_root) if image_root is not None else json_path.parent
    data = _load(json_path)
    names = {k: (category_labels or {}).get(v, v) for k, v in data["detection_categories"].items()}
    classes = data.get("classification_categories", {})
    inventory = Inventory()
    for i, image in enumerate(data["images"]):
        _add_image(inventory, json_path, root, f"images[{i}]", image, threshold, names, classes, empty_label)
    return inventory


def _load(json_path: Path) -> dict:
    data = read_json(json_path)
    if not isinstance(data.get("images"), list) or not isinstance(data.get("detection_categories"), dict):
        raise DatasetError(json_path, "top level", "needs 'images' (list) and 'detection_categories' (dict)")
    return data


def _add_image(inventory: Inventory, json_path: Path, root: Path, where: str, image: dict, threshold: float,
               names: dict, classes: dict, empty_label: str | None) -> None:
    if "file" not in image:
        raise DatasetError(json_path, where, "no 'file'")
    path = root / image["file"]
    if image.get("failure") or image.get("detections") is None:
        inventory.report("failure", json_path, where, f"{path}: {image.get('failure') or 'no detections'}")
        return
    kept = 0
    for j, detection in enumerate(image["detections"]):
        entry = f"{where}.detections[{j}]"
        if float(detection.get("conf", -1)) >= threshold:
            inventory.add(_record(path, detection, names, classes, json_path, entry), json_path, entry)
            kept += 1
    if kept == 0 and empty_label:
        inventory.add(Record(path, (empty_label,), source="megadetector"), json_path, where)
    elif kept == 0:
        inventory.report("unlabelled", json_path, where, f"{path}: no box above {threshold}")


def _record(path: Path, detection: dict, names: dict, classes: dict, json_path: Path, where: str) -> Record:
    if detection.get("category") not in names:
        raise DatasetError(json_path, where, f"unknown detection category {detection.get('category')!r}")
    if len(detection.get("bbox") or []) != 4:
        raise DatasetError(json_path, where, f"bbox {detection.get('bbox')} is not [x, y, w, h]")
    label = names[detection["category"]]
    extra = {"conf": float(detection["conf"]), "detection_category": label}
    if detection.get("classifications"):
        class_id, score = max(detection["classifications"], key=lambda pair: pair[1])
        if class_id not in classes:
            raise DatasetError(json_path, where, f"unknown classification category {class_id!r}")
        label = classes[class_id]
        extra["classification_conf"] = float(score)
    box = check_bbox(tuple(float(v) for v in detection["bbox"]), json_path, where)
    return Record(path, (label,), bbox=box, source="megadetector", extra=extra)
