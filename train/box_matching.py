"""One-to-one matching of detections against reference boxes: the recall figure of the detector
report, the export gates and the tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.runtime.detections import Detections
from edge.runtime.yolox import box_iou


def matched_recall(reference: list[Detections], candidate: list[Detections], iou: float = 0.5) -> tuple[float, int]:
    """Share of reference boxes matched one-to-one by a same-class candidate box with IoU ≥ ``iou``.

    Returns:
        (recall, number of reference boxes); recall is 1.0 when there are none.
    """
    matched = total = 0
    for ref, cand in zip(reference, candidate, strict=True):
        total += len(ref)
        free = np.ones(len(cand), bool)
        for k in np.argsort(-ref.confidence):
            ok = free & (cand.class_id == ref.class_id[k])
            if not ok.any():
                continue
            ious = np.where(ok, box_iou(ref.xyxy[k], cand.xyxy), -1.0)
            best = int(ious.argmax())
            if ious[best] >= iou:
                matched += 1
                free[best] = False
    return (matched / total if total else 1.0), total


SIZES = (("small", 0.0, 0.01), ("medium", 0.01, 0.1), ("large", 0.1, float("inf")))
"""Box size buckets by the box's share of the image area: small < 1 % ≤ medium < 10 % ≤ large."""


def size_of(box: Sequence[float]) -> str:
    """The size bucket of a normalised ``[x, y, w, h]`` box (by its area share of the image)."""
    area = float(box[2]) * float(box[3])
    return next(name for name, low, high in SIZES if low <= area < high)


def size_buckets(det: Detections, shape: tuple[int, int]) -> np.ndarray:
    """The size bucket of each box of ``det`` in an image of ``shape`` (h, w)."""
    return np.array([size_of(box) for box in det.normalised_xywh(shape)], dtype=object)


def recall_by_bucket(reference: list[Detections], candidate: list[Detections], shapes: Sequence[tuple[int, int]],
                     labels: Sequence[str], iou: float = 0.5) -> dict[str, tuple[float, int]]:
    """``matched_recall`` of the reference boxes of each class and of each (class, size bucket).

    Returns:
        ``{"person": (recall, boxes), "person.small": (recall, boxes), ...}`` for every class and
        bucket with at least one reference box.
    """
    out = {}
    sizes = [size_buckets(ref, shape) for ref, shape in zip(reference, shapes, strict=True)]
    for class_id, name in enumerate(labels):
        for size in (None, *(s for s, _, _ in SIZES)):
            kept = [ref[(ref.class_id == class_id) & ((bucket == size) if size else True)]
                    for ref, bucket in zip(reference, sizes)]
            recall, n = matched_recall(kept, candidate, iou)
            if n:
                out[name if size is None else f"{name}.{size}"] = (recall, n)
    return out
