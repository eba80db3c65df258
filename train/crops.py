"""Boxes for unboxed training images, from a bundle's detector, cached on disk.

The classifier is served detection crops, so it should be trained on them: each image without a
box gets the best box the bundle's detector finds, found exactly as the edge finds it (same
runtime, info bars cut first). An image where nothing is found keeps no box and is trained whole
(empty frames, mostly). Results are cached by file (path, mtime, size) and bundle version.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from common.progress import progress
from edge.capture.decode import DEFAULT_MAX_SIDE, ImageDecodeError, decode_image
from edge.capture.frame_stats import detect_info_bars, trim_info_bars
from edge.runtime.bundle import load_bundle
from edge.runtime.models import Detector
from train.records import Record


def _key(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}"


def best_box(detector: Detector, path: Path) -> tuple[list[float] | None, float]:
    """Normalised [x, y, w, h] of the most confident detection of one image (None if none) and its score."""
    rgb = decode_image(path, max_side=DEFAULT_MAX_SIDE).rgb
    top, bottom = detect_info_bars(rgb)
    found = detector.detect(trim_info_bars(rgb, top, bottom))
    if not len(found):
        return None, 0.0
    k = int(np.argmax(found.confidence))
    x1, y1, x2, y2 = (float(v) for v in found.xyxy[k])
    h, w = rgb.shape[:2]
    return [x1 / w, (y1 + top) / h, (x2 - x1) / w, (y2 - y1) / h], float(found.confidence[k])


def detector_boxes(records: Sequence[Record], bundle_dir: Path, cache_path: Path, precision: str = "int8") -> list[Record]:
    """``records`` with the detector's best box on each unboxed one (boxed records pass through)."""
    bundle = load_bundle(bundle_dir)
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    version = bundle.manifest.version
    entries = cache.setdefault(version, {})
    detector = None
    out, found = [], 0
    for record in progress(records, desc="detector crops", unit="image", leave=False):
        if record.bbox is not None:
            out.append(record)
            continue
        key = _key(record.path)
        if key not in entries:
            detector = detector or Detector(bundle, precision)
            try:
                entries[key] = best_box(detector, record.path)
            except (ImageDecodeError, OSError) as exc:
                entries[key] = (None, 0.0, str(exc))
        box, score = entries[key][:2]
        found += box is not None
        out.append(record if box is None else dataclasses.replace(
            record, bbox=tuple(box), extra={**record.extra, "box_source": "detector", "box_confidence": score}))
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_suffix(".part")
    partial.write_text(json.dumps({version: entries}))
    partial.replace(cache_path)
    unboxed = sum(r.bbox is None for r in records)
    print(f"detector crops: {found} of {unboxed} unboxed images got a box (bundle {version}); the rest stay whole")
    return out
