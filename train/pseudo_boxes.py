"""Boxes for frames that only have an image label, made by the detector and checked by a person.

A camera-trap project often has hundreds of frames labelled ``Human`` or ``Vehicle`` but no
boxes, while a three-class detector needs boxes of people and vehicles. This tool runs the
pretrained detector on such frames, gives each box the frame's class (``person``,
``vehicle``), and writes MegaDetector-format JSON with a contact sheet per class to check by
eye. The review (``--review``) keeps, relabels or drops each box and may draw a missing one;
a frame it does not list (a box on the wrong thing, a person without a box, two people in one
box) is left out of the JSON, so an unchecked box never trains the detector. Frames labelled
empty are kept as empty images (negatives).

``python -m train.pseudo_boxes LABELS.csv --map Human=person Vehicle=vehicle Empty=empty
--out boxes.json --sheets sheets/ [--review review.json]``
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from edge.capture.decode import ImageDecodeError, decode_image
from train.detector_data import MAX_SIDE
from train.detector_eval import detect
from train.models.yolox import NATIVE_SIZE, load_yolox

CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}  # MegaDetector's ids
CATEGORY_IDS = {name: key for key, name in CATEGORIES.items()}
THRESHOLD = 0.3
SHEET_COLUMNS, SHEET_TILE = 6, 256
COLOURS = [(255, 0, 0), (0, 255, 255), (255, 255, 0), (255, 0, 255), (0, 255, 0)]


def read_labels(csv_path: Path, path_column: str = "file", label_column: str = "label") -> list[tuple[str, str]]:
    """(relative path, label) rows of a ``file,label`` CSV."""
    with csv_path.open(newline="") as f:
        return [(row[path_column], row[label_column]) for row in csv.DictReader(f)]


def pseudo_boxes(rows: Sequence[tuple[str, str]], root: Path, classes: dict[str, str], checkpoint: Path,
                 threshold: float = THRESHOLD, review: dict[str, list] | None = None) -> tuple[dict, dict[str, list]]:
    """MegaDetector JSON of the frames whose label is in ``classes``; also, per class, what to draw.

    Args:
        rows: (path relative to ``root``, label).
        classes: frame label → detector class (``person``, ``vehicle``) or ``empty``.
        checkpoint: the 1-class pretrained detector.
        threshold: lowest detector confidence of a kept box.
        review: the reviewer's verdicts, ``{path: entries}``; an entry ``"k=class"`` keeps the
            detector's box k (boxes by falling confidence, as numbered on the sheet) as that class,
            ``[class, x, y, w, h]`` adds a box drawn by hand (normalised). With a review, a frame
            of a box class that it does not list is left out (rejected); without, every box gets
            the frame's class (for the first look).

    Returns:
        The JSON document and ``{class: [(path, boxes as [x, y, w, h, conf] normalised)]}``: the
        detector's boxes of the frames of box classes, for the contact sheets (frames of a box
        class with no box are dropped unless the review draws one: they cannot train).
    """
    model = load_yolox(checkpoint).eval()
    images, drawn, dropped = [], {}, {"no box": [], "rejected": [], "unreadable": []}
    for rel, label in rows:
        target = classes.get(label)
        if target is None:
            continue
        if target == "empty":
            images.append({"file": rel, "detections": []})
            continue
        try:
            rgb = decode_image(root / rel, max_side=MAX_SIDE).rgb
        except (ImageDecodeError, OSError) as exc:
            dropped["unreadable"].append(f"{rel}: {exc}")
            continue
        found = detect(model, [rgb], NATIVE_SIZE, threshold)[0]
        h, w = rgb.shape[:2]
        found_xyxy = np.clip(found.xyxy, 0, [w, h, w, h])
        boxes = [[round(float(x0) / w, 4), round(float(y0) / h, 4), round(float(x1 - x0) / w, 4),
                  round(float(y1 - y0) / h, 4), round(float(s), 3)]
                 for (x0, y0, x1, y1), s in zip(found_xyxy, found.confidence)]
        if boxes:
            drawn.setdefault(target, []).append((rel, boxes))
        if review is not None and rel not in review:
            dropped["rejected"].append(rel)
            continue
        detections = (reviewed(boxes, review[rel], rel) if review is not None
                      else [_detection(target, b[:4], b[4]) for b in boxes])
        if not detections:
            dropped["no box"].append(rel)
            continue
        images.append({"file": rel, "detections": detections})
    document = {"info": {"format_version": "1.4", "detector": checkpoint.name,
                         "description": f"boxes of the pretrained detector at conf >= {threshold} given the "
                                        "frame's class, " + ("checked by eye (review: kept, relabelled or drawn "
                                        "by hand; conf 1.0 = drawn by hand)" if review is not None
                                        else "NOT reviewed") + "; frames dropped: "
                                        + json.dumps({k: len(v) for k, v in dropped.items()}),
                         "dropped": dropped},
                "detection_categories": CATEGORIES, "images": images}
    return document, drawn


def _detection(target: str, bbox: Sequence[float], conf: float) -> dict:
    if target not in CATEGORY_IDS:
        raise ValueError(f"unknown class {target!r}: expected one of {sorted(CATEGORY_IDS)}")
    if len(bbox) != 4 or not all(0 <= v <= 1 for v in bbox) or bbox[0] + bbox[2] > 1.001 or bbox[1] + bbox[3] > 1.001:
        raise ValueError(f"box {list(bbox)} is not a normalised [x, y, w, h] inside the image")
    return {"category": CATEGORY_IDS[target], "conf": conf, "bbox": [round(float(v), 4) for v in bbox]}


def reviewed(boxes: Sequence[Sequence[float]], entries: Sequence, where: str) -> list[dict]:
    """The detections a review keeps: ``"k=class"`` keeps box k, ``[class, x, y, w, h]`` is drawn by hand.

    Raises:
        ValueError: an entry names a box the detector did not find, or is malformed.
    """
    out = []
    for entry in entries:
        try:
            if isinstance(entry, str):
                index, target = entry.split("=", 1)
                box = boxes[int(index)]
                out.append(_detection(target, box[:4], box[4]))
            else:
                out.append(_detection(entry[0], entry[1:], 1.0))
        except (ValueError, IndexError, TypeError) as exc:
            raise ValueError(f"review of {where}: entry {entry!r}: {exc}") from None
    return out


def contact_sheet(root: Path, frames: Sequence[tuple[str, list]], out: Path) -> None:
    """Every frame with its boxes, numbered, ``SHEET_COLUMNS`` per row, for review."""
    rows = max(1, math.ceil(len(frames) / SHEET_COLUMNS))
    sheet = Image.new("RGB", (SHEET_COLUMNS * SHEET_TILE, rows * (SHEET_TILE + 14)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (rel, boxes) in enumerate(frames):
        tile = Image.open(root / rel).convert("RGB").resize((SHEET_TILE, SHEET_TILE))
        tile_draw = ImageDraw.Draw(tile)
        for k, (x, y, w, h, _) in enumerate(boxes):
            tile_draw.rectangle([x * SHEET_TILE, y * SHEET_TILE, (x + w) * SHEET_TILE, (y + h) * SHEET_TILE],
                                outline=COLOURS[k % len(COLOURS)], width=2)
            tile_draw.text((x * SHEET_TILE + 3, y * SHEET_TILE + 2), str(k), fill=COLOURS[k % len(COLOURS)])
        left, top = (i % SHEET_COLUMNS) * SHEET_TILE, (i // SHEET_COLUMNS) * (SHEET_TILE + 14)
        sheet.paste(tile, (left, top + 14))
        draw.text((left + 2, top), f"{i} {Path(rel).name}", fill=(0, 0, 0))
    sheet.save(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", type=Path, help="file,label CSV; paths relative to its folder")
    parser.add_argument("--map", nargs="+", required=True, metavar="LABEL=CLASS",
                        help="frame label to person / vehicle / empty, e.g. Human=person")
    parser.add_argument("--checkpoint", type=Path, default=Path("models/yolox_tiny_640_20220528.pth"))
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument("--review", type=Path, help="JSON {path: entries} of the checked frames (see pseudo_boxes)")
    parser.add_argument("--out", type=Path, required=True, help="MegaDetector-format JSON to write")
    parser.add_argument("--sheets", type=Path, help="folder for one contact sheet per class")
    args = parser.parse_args(argv)
    try:
        classes = dict(item.split("=", 1) for item in args.map)
    except ValueError:
        raise SystemExit(f"--map takes LABEL=CLASS pairs, got {args.map}") from None
    bad = sorted(set(classes.values()) - {"person", "vehicle", "animal", "empty"})
    if bad:
        raise SystemExit(f"--map classes must be person, vehicle, animal or empty, not {bad}")
    root = args.labels.parent
    try:
        rows = read_labels(args.labels)
        review = json.loads(args.review.read_text()) if args.review else None
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        raise SystemExit(f"pseudo_boxes: cannot read {exc}: give a file,label CSV and a JSON review") from None
    try:
        document, drawn = pseudo_boxes(rows, root, classes, args.checkpoint, args.threshold,
                                       review)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if review is not None:
        document["info"]["review"] = review
    args.out.write_text(json.dumps(document, indent=1) + "\n")
    if args.sheets:
        args.sheets.mkdir(parents=True, exist_ok=True)
        for target, frames in drawn.items():
            contact_sheet(root, frames, args.sheets / f"{target}.png")
    kept = {t: len(f) for t, f in drawn.items()}
    print(f"wrote {args.out}: {len(document['images'])} frames ({kept} with boxes); dropped "
          + ", ".join(f"{k} {len(v)}" for k, v in document["info"]["dropped"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
