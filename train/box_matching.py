"""One-to-one matching of detections against reference boxes: the recall figure of the detector
report, the export gates and the tests."""

from __future__ import annotations

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
