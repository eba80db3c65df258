"""Detector evaluation the way the edge runs it: letterbox, the edge's ``postprocess``, per-class
AP at IoU 0.5 (VOC all-point interpolation) and recall at the bundle's threshold.
"""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np
import torch

from edge.capture.decode import ImageDecodeError, decode_image
from edge.detections import Detections
from edge.runtime.preprocess import letterbox, to_tensor
from edge.runtime.yolox import box_iou, make_grid, postprocess
from export.build import detector_input
from export.gates import matched_recall
from train.detector_data import MANIFEST_THRESHOLD, MAX_SIDE, NMS_IOU, BoxImage, box_images
from train.models.yolox import STRIDES, YOLOX
from train.records import Record


def detect(model: YOLOX, images: Sequence[np.ndarray], input_size: tuple[int, int], threshold: float,
           batch_size: int = 4) -> list[Detections]:
    """Run the model as the edge does: letterbox, raw output, ``postprocess``, boxes back to source pixels."""
    spec = detector_input(input_size)
    grid, strides = make_grid(tuple(input_size), list(STRIDES))
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        boxed = [letterbox(im, tuple(spec.size), spec.pad_value, spec.pad_anchor, spec.interpolation)
                 for im in images[start : start + batch_size]]
        with torch.no_grad():
            raw = model(torch.from_numpy(to_tensor([c for c, _ in boxed], spec))).numpy()
        for r, (_, box) in zip(raw, boxed):
            xyxy, scores, class_ids = postprocess(r, grid, strides, threshold, NMS_IOU)
            out.append(Detections(box.to_source(xyxy), scores, class_ids))
    return out


def average_precision(truths: Sequence[Detections], predictions: Sequence[Detections], class_id: int,
                      iou: float = 0.5) -> float | None:
    """VOC all-point interpolated AP of one class (None when it has no ground truth box).

    Detections of all images are ranked by confidence; each is a true positive when its best
    IoU with a still unmatched same-class truth box of its image is ≥ ``iou``.
    """
    gts = [t.xyxy[t.class_id == class_id] for t in truths]
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        return None
    ranked = sorted(((float(s), i, b) for i, p in enumerate(predictions)
                     for s, b, c in zip(p.confidence, p.xyxy, p.class_id) if c == class_id), key=lambda t: -t[0])
    taken = [np.zeros(len(g), bool) for g in gts]
    hits = np.array([_claim(box, gts[i], taken[i], iou) for _, i, box in ranked], bool)
    recall = np.cumsum(hits) / n_gt
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return _interpolated_area(recall, precision)


def _claim(box: np.ndarray, gts: np.ndarray, taken: np.ndarray, iou: float) -> bool:
    """Whether ``box`` matches its best-IoU truth box, still unclaimed (which it then claims)."""
    if len(gts) == 0:
        return False
    ious = box_iou(box, gts)
    best = int(ious.argmax())
    if ious[best] < iou or taken[best]:
        return False
    taken[best] = True
    return True


def _interpolated_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (max precision at any higher recall), VOC 2010+ style."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _truth(image: BoxImage, hw: tuple[int, int]) -> Detections:
    h, w = hw
    return Detections(image.xyxy * np.array([w, h, w, h], np.float32), np.ones(len(image.xyxy)), image.class_id)


def evaluate_detector(model: YOLOX, records: Sequence[Record], classes: Sequence[str],
                      input_size: tuple[int, int] = (480, 640), threshold: float = 0.001) -> dict:
    """Score a detector on boxed records the way the edge runs it.

    Returns:
        ``images``, ``boxes``, ``boxes_per_class``, ``ap50`` (class → AP at IoU 0.5, classes
        with ground truth only), ``map50`` (their mean; 0.0 without any box), ``recall`` (share of
        truth boxes matched one-to-one at IoU 0.5 by a same-class detection scoring ≥
        ``recall_threshold``, the manifest's 0.25) and ``failures`` (path, reason).
    """
    images = box_images(records, classes)
    pixels, kept, failures = [], [], []
    for image in images:
        try:
            pixels.append(decode_image(image.path, max_side=MAX_SIDE).rgb)
            kept.append(image)
        except (ImageDecodeError, OSError) as exc:
            failures.append((str(image.path), str(exc) or type(exc).__name__))
    truths = [_truth(im, px.shape[:2]) for im, px in zip(kept, pixels)]
    predictions = detect(model, pixels, input_size, threshold)
    ap = {name: average_precision(truths, predictions, k) for k, name in enumerate(classes)}
    ap = {name: value for name, value in ap.items() if value is not None}
    recall, boxes = matched_recall(truths, [p[p.confidence >= MANIFEST_THRESHOLD] for p in predictions])
    counts = Counter(classes[c] for t in truths for c in t.class_id)
    return {"images": len(kept), "boxes": boxes, "boxes_per_class": dict(counts), "ap50": ap,
            "map50": float(np.mean(list(ap.values()))) if ap else 0.0, "recall": float(recall),
            "recall_threshold": MANIFEST_THRESHOLD, "failures": failures}


def kept_detections(reference: YOLOX, model: YOLOX, records: Sequence[Record], input_size: tuple[int, int]) -> float:
    """Share of the reference model's boxes (score ≥ 0.25) that ``model`` also finds (same class,
    IoU ≥ 0.5, score ≥ 0.25): what fine-tuning kept of the pretrained detector, whatever the labels."""
    paths = list(dict.fromkeys(r.path for r in records))
    pixels = [decode_image(path, max_side=MAX_SIDE).rgb for path in paths]
    found = [detect(m, pixels, input_size, MANIFEST_THRESHOLD) for m in (reference, model)]
    return float(matched_recall(*found)[0])
