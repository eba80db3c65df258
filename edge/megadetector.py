"""MegaDetector batch output format (v1.6): the format camera-trap tools already read.

Boxes are ``[x_min, y_min, width, height]`` normalised to the image; categories are string
keys; an image that could not be processed carries a ``failure`` string and no detections.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from edge.detections import Detections
from edge.runtime.manifest import Manifest

FORMAT_VERSION = "1.6"


@dataclass(frozen=True)
class ImageResult:
    """What happened to one image: detections (in source pixels) or a failure."""

    file: str
    detections: Detections | None = None
    image_hw: tuple[int, int] | None = None
    failure: str | None = None


def _category_map(labels: list[str], first: int = 1) -> dict[str, str]:
    return {str(i + first): label for i, label in enumerate(labels)}


def normalised_xywh(xyxy: np.ndarray, image_hw: tuple[int, int]) -> list[list[float]]:
    """Pixel xyxy boxes → normalised ``[x, y, w, h]`` rounded to 4 decimals (MD convention)."""
    h, w = image_hw
    x1, y1, x2, y2 = (xyxy.astype(np.float64) / [w, h, w, h]).clip(0, 1).T
    return np.round(np.stack([x1, y1, x2 - x1, y2 - y1], axis=1), 4).tolist()


def image_entry(result: ImageResult, top_k: int = 3) -> dict:
    """One ``images[]`` entry."""
    if result.failure is not None:
        return {"file": result.file, "failure": result.failure, "detections": None}
    det = result.detections
    probs = det.data.get("species_probs")
    entries = []
    for i, bbox in enumerate(normalised_xywh(det.xyxy, result.image_hw)):
        entry = {"category": str(int(det.class_id[i]) + 1), "conf": round(float(det.confidence[i]), 4), "bbox": bbox}
        if probs is not None:
            order = np.argsort(-probs[i])[:top_k]
            entry["classifications"] = [[str(int(k)), round(float(probs[i, k]), 4)] for k in order]
        entries.append(entry)
    return {"file": result.file, "detections": entries}


def batch_output(results: list[ImageResult], manifest: Manifest, precision: str, classified: bool) -> dict:
    """The whole MegaDetector batch output document."""
    detector = manifest.models["detector"]
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    info = {
        "format_version": FORMAT_VERSION,
        "detector": f"trapedge-{manifest.name}-{manifest.version}-{detector.architecture}-{precision}",
        "detection_completion_time": now,
        "detector_metadata": {
            "typical_detection_threshold": detector.thresholds["confidence"],
            "conservative_detection_threshold": round(detector.thresholds["confidence"] / 2, 4),
        },
    }
    document = {"info": info, "detection_categories": _category_map(detector.labels)}
    if classified:
        classifier = manifest.models["classifier"]
        info.update(classifier=f"trapedge-{manifest.name}-{classifier.architecture}-{precision}",
                    classification_completion_time=now,
                    classifier_metadata={"typical_classification_threshold": classifier.thresholds.get("confidence", 0.5)})
        document["classification_categories"] = _category_map(classifier.labels, first=0)
    document["images"] = [image_entry(r) for r in results]
    return document
