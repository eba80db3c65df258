"""MegaDetector batch output format (v1.6): the format camera-trap tools already read.

Boxes are ``[x_min, y_min, width, height]`` normalised to the image; categories are string
keys; an image that could not be processed carries a ``failure`` string and no detections. A box
whose final label came from the classifier lists the classifier's top classes, best first (so its
first classification is its label); a box the detector labelled (a person, a vehicle) lists none.
Each image also carries SpeciesNet's image-level ``prediction``, ``prediction_score`` and
``prediction_source`` (``edge.analysis.labels.frame_prediction``); a whole-frame classification
(no box found) shows only there, as it is no detection.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from edge.analysis.labels import ENSEMBLE, WHOLE_FRAME, frame_prediction
from edge.runtime.detections import Detections
from edge.runtime.manifest import Manifest, ModelSpec

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


def image_entry(result: ImageResult, top_k: int = 3) -> dict:
    """One ``images[]`` entry."""
    if result.failure is not None or result.detections is None or result.image_hw is None:
        return {"file": result.file, "failure": result.failure or "not analysed", "detections": None}
    det = result.detections
    prediction = _prediction(det)
    if "label_source" in det.data:
        det = det[det.data["label_source"] != WHOLE_FRAME]
    probs = det.data.get("species_probs")
    if probs is not None and "label_probs" in det.data:  # the vote over the classifier's labels
        probs = det.data["label_probs"][:, : probs.shape[1]]
    entries = []
    for i, bbox in enumerate(det.normalised_xywh(result.image_hw)):
        entry: dict[str, object] = {"category": str(int(det.class_id[i]) + 1),
                                    "conf": round(float(det.confidence[i]), 4), "bbox": bbox}
        if probs is not None and det.data["label_source"][i] in ("classifier", ENSEMBLE):
            order = np.argsort(-probs[i], kind="stable")[:top_k]
            entry["classifications"] = [[str(int(k)), round(float(probs[i, k]), 4)] for k in order]
        entries.append(entry)
    return {"file": result.file, "detections": entries, **prediction}


def _prediction(det: Detections) -> dict:
    if "label" not in det.data:
        return {}
    label, score, source = frame_prediction(det)
    return {"prediction": label, "prediction_score": None if score is None else round(score, 4),
            "prediction_source": source}


def batch_output(results: list[ImageResult], manifest: Manifest, precision: str, classified: bool) -> dict:
    """The whole MegaDetector batch output document."""
    detector: ModelSpec = manifest.models["detector"]
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
