"""MegaDetector batch output format (v1.6): the format camera-trap tools already read.

Boxes are ``[x_min, y_min, width, height]`` normalised to the image; categories are string
keys; an image that could not be processed carries a ``failure`` string and no detections. A box
whose final label came from the classifier lists the classifier's top classes, best first (so its
first classification is its label); a box the detector labelled (a person, a vehicle) lists none.
Each image also carries SpeciesNet's image-level ``prediction``, ``prediction_score`` and
``prediction_source`` (``edge.analysis.labels.frame_prediction``); a whole-frame classification
(no box found) shows only there, as it is no detection. A video clip is one entry with the format's
video fields: ``frame_rate``, ``frames_processed`` (the sampled frame numbers) and, on each of the
boxes of every sampled frame, its ``frame_number``; its prediction is taken over all those boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class SampledFrame:
    """One sampled frame of a video clip: its number in the clip and its detections (in its pixels)."""

    number: int
    detections: Detections
    image_hw: tuple[int, int]


@dataclass(frozen=True)
class VideoResult:
    """What happened to one video clip: its sampled frames, or a failure (``frame_rate`` when it was read)."""

    file: str
    frame_rate: float | None = None
    frames: tuple[SampledFrame, ...] = field(default_factory=tuple)
    failure: str | None = None


def _category_map(labels: list[str], first: int = 1) -> dict[str, str]:
    return {str(i + first): label for i, label in enumerate(labels)}


def image_entry(result: ImageResult, top_k: int = 3) -> dict:
    """One ``images[]`` entry."""
    if result.failure is not None or result.detections is None or result.image_hw is None:
        return {"file": result.file, "failure": result.failure or "not analysed", "detections": None}
    det = result.detections
    return {"file": result.file, "detections": _detection_entries(det, result.image_hw, top_k), **_prediction(det)}


def video_entry(result: VideoResult, top_k: int = 3) -> dict:
    """One ``images[]`` entry for a video clip, with the format's video fields (a clip that failed has no
    frames processed, and a frame rate when its header gave one)."""
    rate = {} if result.frame_rate is None else {"frame_rate": round(result.frame_rate, 3)}
    if result.failure is not None or not result.frames:
        return {"file": result.file, **rate, "frames_processed": [], "failure": result.failure or "no frame analysed",
                "detections": None}
    entries = [{**entry, "frame_number": frame.number} for frame in result.frames
               for entry in _detection_entries(frame.detections, frame.image_hw, top_k)]
    return {"file": result.file, **rate, "frames_processed": [frame.number for frame in result.frames],
            "detections": entries, **_prediction(*(frame.detections for frame in result.frames))}


def _detection_entries(det: Detections, image_hw: tuple[int, int], top_k: int) -> list[dict]:
    """The boxes of one image (a whole-frame classification is none), each with its classifications when
    the classifier labelled it."""
    if "label_source" in det.data:
        det = det[det.data["label_source"] != WHOLE_FRAME]
    probs = det.data.get("species_probs")
    if probs is not None and "label_probs" in det.data:  # the vote over the classifier's labels
        probs = det.data["label_probs"][:, : probs.shape[1]]
    entries = []
    for i, bbox in enumerate(det.normalised_xywh(image_hw)):
        entry: dict[str, object] = {"category": str(int(det.class_id[i]) + 1),
                                    "conf": round(float(det.confidence[i]), 4), "bbox": bbox}
        if probs is not None and det.data["label_source"][i] in ("classifier", ENSEMBLE):
            order = np.argsort(-probs[i], kind="stable")[:top_k]
            entry["classifications"] = [[str(int(k)), round(float(probs[i, k]), 4)] for k in order]
        entries.append(entry)
    return entries


def _prediction(*frames: Detections) -> dict:
    """The image-level prediction over the boxes of one image, or of every sampled frame of a clip."""
    if not all("label" in det.data for det in frames):
        return {}
    det = frames[0] if len(frames) == 1 else _joined(frames)
    label, score, source = frame_prediction(det)
    return {"prediction": label, "prediction_score": None if score is None else round(score, 4),
            "prediction_source": source}


def _joined(frames: tuple[Detections, ...]) -> Detections:
    """The boxes of several frames as one ``Detections`` carrying what ``frame_prediction`` reads."""
    columns = ("label", "label_score", "label_source")
    return Detections(np.concatenate([d.xyxy for d in frames]), np.concatenate([d.confidence for d in frames]),
                      np.concatenate([d.class_id for d in frames]),
                      {c: np.concatenate([d.data[c] for d in frames]) for c in columns})


def batch_output(results: Sequence[ImageResult | VideoResult], manifest: Manifest, precision: str,
                 classified: bool) -> dict:
    """The whole MegaDetector batch output document (images and video clips)."""
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
    document["images"] = [video_entry(r) if isinstance(r, VideoResult) else image_entry(r) for r in results]
    return document
