"""Accuracy gates between fp32 and INT8 (and torch and ONNX): pure functions of model outputs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.labels import category_of
from edge.analysis.labels import LabelSpace, combine_labels
from edge.runtime.detections import Detections
from edge.runtime.yolox import box_iou
from train.box_matching import matched_recall, recall_by_bucket

# The thresholds an export must meet (issue: foundation bundle).
# ONNX Runtime fp32 against torch: the largest difference as a share of the output's own scale (max |torch|,
# at least 1). An absolute 1e-3 refused a fine-tuned detector whose logits reach tens at 0.0015 on an AMD EPYC
# (float32 summation order; the same model passed on a Xeon), while an export bug differs by tenths or more
TORCH_ONNX_MAX_REL = 1e-3
DETECTOR_RECALL_MIN = 0.95
# a reference box counts as found by a candidate box scoring at most this much below the threshold:
# boxes right at the threshold (0.250 in fp32) otherwise flip with any rounding
DETECTOR_SCORE_TOLERANCE = 0.1
DETECTOR_BOX_IOU_MIN = 0.9
CLASSIFIER_AGREEMENT_MIN = 0.97
CLASSIFIER_CONFIDENT = 0.5
EMBEDDER_COSINE_MIN = 0.98
# per detector class and per box-size bucket: INT8 must keep this share of fp32's boxes, judged
# where fp32 found at least PER_BUCKET_MIN_BOXES (fewer: reported, not gated)
PER_BUCKET_RECALL_MIN = 0.9
PER_BUCKET_MIN_BOXES = 8


class GateError(RuntimeError):
    """An export gate failed; the bundle must not be written."""


@dataclass(frozen=True)
class Gate:
    """One measured figure against its limit."""

    name: str
    value: float
    limit: float
    higher_is_better: bool = True

    @property
    def passed(self) -> bool:
        return bool(self.value >= self.limit if self.higher_is_better else self.value <= self.limit)

    def __str__(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.value:.4g} (needs {op} {self.limit:g})"


def enforce(gates: list[Gate]) -> None:
    """Raise ``GateError`` listing every failed gate."""
    failed = [str(g) for g in gates if not g.passed]
    if failed:
        raise GateError("export gates failed:\n  " + "\n  ".join(failed))


def recall_within_tolerance(reference: list[Detections], candidate: list[Detections], threshold: float,
                            tolerance: float = DETECTOR_SCORE_TOLERANCE, iou: float = 0.5) -> tuple[float, int]:
    """``matched_recall`` of the reference boxes scoring >= ``threshold`` among the candidate boxes
    scoring >= ``threshold - tolerance`` (run both detectors at the lower threshold)."""
    return matched_recall([r[r.confidence >= threshold] for r in reference],
                          [c[c.confidence >= threshold - tolerance] for c in candidate], iou)


def recall_per_bucket(reference: list[Detections], candidate: list[Detections], shapes: list[tuple[int, int]],
                      labels: list[str], threshold: float, tolerance: float = DETECTOR_SCORE_TOLERANCE,
                      ) -> dict[str, tuple[float, int]]:
    """``recall_within_tolerance`` per detector class and per (class, size bucket): ``{"person.small": (recall, n)}``."""
    return recall_by_bucket([r[r.confidence >= threshold] for r in reference],
                            [c[c.confidence >= threshold - tolerance] for c in candidate], shapes, labels)


CATEGORIES = ("animal", "person", "vehicle")


def edge_categories(boxes: Detections, probs: np.ndarray, space: LabelSpace) -> np.ndarray:
    """Each box's category index in ``CATEGORIES`` from the label the edge gives it with these classifier
    probabilities (``edge.analysis.labels.combine_labels``, the one combiner: a person or vehicle needs its
    majority there); an animal, a roll-up or an empty label is 0."""
    labels = combine_labels(boxes.with_data(species_probs=np.asarray(probs, np.float32)), space).labels()
    return np.array([CATEGORIES.index(c) if (c := category_of(label)) in CATEGORIES[1:] else 0 for label in labels],
                    np.int64)


def recall_by_category(reference: list[Detections], categories: list[np.ndarray], candidate: list[Detections],
                       shapes: list[tuple[int, int]], threshold: float, tolerance: float = DETECTOR_SCORE_TOLERANCE,
                       ) -> dict[str, tuple[float, int]]:
    """INT8's recall of the fp32 boxes (``reference``, already at the threshold) that the fp32 classifier
    makes people or vehicles (``categories``, per box), overall and per size bucket, whatever the
    detector's class: ``{"classified_person": (recall, n), "classified_person.small": ...}``. A one-class
    detector's people are inside ``animal``, where losing a few of them would not show."""
    near = [c[c.confidence >= threshold - tolerance] for c in candidate]
    anyclass = [Detections(c.xyxy, c.confidence, np.zeros(len(c), np.int64)) for c in near]
    out: dict[str, tuple[float, int]] = {}
    for index, name in enumerate(CATEGORIES[1:], start=1):
        kept = [Detections(r.xyxy[cat == index], r.confidence[cat == index], np.zeros(int((cat == index).sum()), np.int64))
                for r, cat in zip(reference, categories, strict=True)]
        out.update(recall_by_bucket(kept, anyclass, shapes, [f"classified_{name}"]))
    return out


def bucket_gates(per_bucket: dict[str, tuple[float, int]], prefix: str = "detector.int8_recall_of_fp32",
                 limit: float = PER_BUCKET_RECALL_MIN, min_boxes: int = PER_BUCKET_MIN_BOXES) -> list[Gate]:
    """One gate per bucket with at least ``min_boxes`` reference boxes."""
    return [Gate(f"{prefix}.{key}", recall, limit) for key, (recall, n) in per_bucket.items() if n >= min_boxes]


def mean_box_iou(reference: list[Detections], candidate: list[Detections], threshold: float,
                 tolerance: float = DETECTOR_SCORE_TOLERANCE, iou: float = 0.5) -> float:
    """Mean IoU of each found reference box (as in ``recall_within_tolerance``) with its best
    same-class candidate: how tight the boxes stay. 1.0 when none is found."""
    ious = []
    for ref, cand in zip(reference, candidate, strict=True):
        cand = cand[cand.confidence >= threshold - tolerance]
        for k in np.flatnonzero(ref.confidence >= threshold):
            same = cand.class_id == ref.class_id[k]
            if same.any():
                best = float(box_iou(ref.xyxy[k], cand.xyxy[same]).max())
                if best >= iou:
                    ious.append(best)
    return float(np.mean(ious)) if ious else 1.0


def top1_agreement(reference: np.ndarray, candidate: np.ndarray,
                   confident: float = CLASSIFIER_CONFIDENT) -> tuple[float, int]:
    """Top-1 agreement on the rows where the reference's top probability ≥ ``confident``.

    Returns:
        (agreement, number of confident rows); agreement is nan when there are none.
    """
    mask = reference.max(axis=1) >= confident
    if not mask.any():
        return float("nan"), 0
    same = reference[mask].argmax(axis=1) == candidate[mask].argmax(axis=1)
    return float(same.mean()), int(mask.sum())


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean cosine similarity of paired rows."""
    num = (reference * candidate).sum(axis=1)
    den = np.linalg.norm(reference, axis=1) * np.linalg.norm(candidate, axis=1)
    return float(np.mean(num / np.maximum(den, 1e-12)))
