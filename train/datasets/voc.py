"""Pascal VOC: ``Annotations/*.xml`` beside ``JPEGImages/``; one record per object."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from train.datasets.inventory import IMAGE_EXTENSIONS, DatasetError, Inventory, check_bbox
from train.records import Record


def read_voc(root: Path | str, *, empty_label: str = "empty") -> Inventory:
    """Read a VOC folder; objects give normalised boxes, an image without objects is ``empty_label``.

    Boxes are ``[xmin/W, ymin/H, (xmax-xmin)/W, (ymax-ymin)/H]``. Images in ``JPEGImages/`` that
    no XML names are reported as ``unannotated``.

    Raises:
        DatasetError: no ``Annotations/`` folder, malformed XML (line named), missing fields.
    """
    root = Path(root)
    annotations = root / "Annotations"
    if not annotations.is_dir():
        raise DatasetError(root, "Annotations/", "not a folder")
    inventory = Inventory()
    named = set()
    for xml_path in sorted(annotations.glob("*.xml")):
        named.add(_read_xml(inventory, root, xml_path, empty_label))
    for image in sorted((root / "JPEGImages").glob("*")):
        if image.suffix.lower() in IMAGE_EXTENSIONS and image not in named:
            inventory.report("unannotated", root / "JPEGImages", image.name, str(image))
    return inventory


def _read_xml(inventory: Inventory, root: Path, xml_path: Path, empty_label: str) -> Path:
    try:
        tree = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise DatasetError(xml_path, f"line {err.position[0]}", f"bad XML: {err}") from None
    path = root / "JPEGImages" / _field(tree, "filename", xml_path)
    width, height = float(_field(tree, "size/width", xml_path)), float(_field(tree, "size/height", xml_path))
    if width <= 0 or height <= 0:
        raise DatasetError(xml_path, "size", f"image size {width}x{height}")
    objects = tree.findall("object")
    if not objects:
        inventory.add(Record(path, (empty_label,), source="voc"), xml_path, "annotation")
    for i, obj in enumerate(objects):
        where = f"object[{i}]"
        name = _field(obj, "name", xml_path, where)
        x0, y0, x1, y1 = (float(_field(obj, f"bndbox/{k}", xml_path, where)) for k in ("xmin", "ymin", "xmax", "ymax"))
        box = check_bbox((x0 / width, y0 / height, (x1 - x0) / width, (y1 - y0) / height), xml_path, where)
        extra = {k: obj.findtext(k) for k in ("pose", "truncated", "difficult") if obj.findtext(k) is not None}
        inventory.add(Record(path, (name,), bbox=box, source="voc", extra=extra), xml_path, where)
    return path


def _field(node: ET.Element, key: str, xml_path: Path, where: str = "annotation") -> str:
    text = node.findtext(key)
    if text is None or not text.strip():
        raise DatasetError(xml_path, where, f"no <{key}>")
    return text.strip()
