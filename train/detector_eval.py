"""Detector evaluation the way the edge runs it: letterbox, the edge's ``postprocess``, per-class
AP at IoU 0.5 (pycocotools' COCOeval, 101-point interpolation) and recall at the bundle's threshold.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from edge.capture.decode import ImageDecodeError, decode_image
from edge.runtime.detections import Detections
from edge.runtime.preprocess import letterbox, to_tensor
from edge.runtime.yolox import make_grid, postprocess
from train.box_matching import matched_recall, recall_by_bucket
from train.detector_data import MANIFEST_THRESHOLD, MAX_SIDE, BoxImage, box_images
from train.models.yolox import NMS_IOU, STRIDES, YOLOX, detector_input
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


def average_precisions(truths: Sequence[Detections], predictions: Sequence[Detections], class_ids: Sequence[int],
                       iou: float = 0.5) -> dict[int, float | None]:
    """AP at one IoU threshold per class, by pycocotools' ``COCOeval`` (None for a class without truth).

    COCO rules: detections of all images are ranked by confidence, only the 100 best of each image
    and class count (``maxDets`` 100), each is a true positive when its best-IoU *still unmatched*
    same-class truth box of its image has IoU ≥ ``iou``, area range "all", and AP is the mean of
    the precision envelope at the 101 recall points 0, 0.01, …, 1 (not VOC's all-point area:
    one of two boxes found scores 51/101, not 1/2).

    Args:
        truths: ground-truth boxes, one ``Detections`` per image.
        predictions: detections of the same images, in the same order.
        class_ids: the classes to score.
        iou: IoU threshold of a match.

    Returns:
        class id → AP in [0, 1], or None where no image has a truth box of that class.
    """
    if len(truths) != len(predictions):
        raise ValueError(f"{len(truths)} truth images but {len(predictions)} prediction images")
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        ground = _coco(truths, class_ids)
        found = _coco(predictions, class_ids, scored=True)
        evaluation = COCOeval(ground, found, "bbox")
        evaluation.params.iouThrs = np.array([iou])
        evaluation.params.areaRng, evaluation.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        evaluation.params.maxDets = [100]
        evaluation.evaluate()
        evaluation.accumulate()
    precision = evaluation.eval["precision"][0, :, :, 0, 0]  # (recall points, classes)
    return {k: None if np.all(precision[:, j] < 0) else float(precision[:, j].mean())
            for j, k in enumerate(class_ids)}


def average_precision(truths: Sequence[Detections], predictions: Sequence[Detections], class_id: int,
                      iou: float = 0.5) -> float | None:
    """COCO 101-point AP of one class (None when it has no ground truth box); see ``average_precisions``."""
    return average_precisions(truths, predictions, [class_id], iou)[class_id]


def _coco(images: Sequence[Detections], class_ids: Sequence[int], scored: bool = False) -> COCO:
    """Boxes as an in-memory COCO dataset: image ``i`` and class ``k`` get ids ``i + 1`` and ``k + 1``.

    Annotation ids also start at 1: COCOeval records a match as the partner's id, so id 0 would
    read as "unmatched".
    """
    annotations: list[dict] = []
    for i, image in enumerate(images):
        for box, score, k in zip(image.xyxy.tolist(), image.confidence.tolist(), image.class_id.tolist()):
            x1, y1, x2, y2 = box
            ann = {"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(k) + 1,
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            annotations.append({**ann, "score": score} if scored else ann)
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1} for i in range(len(images))], "annotations": annotations,
                    "categories": [{"id": int(k) + 1} for k in class_ids]}
    coco.createIndex()
    return coco


def _truth(image: BoxImage, hw: tuple[int, int]) -> Detections:
    h, w = hw
    return Detections(image.xyxy * np.array([w, h, w, h], np.float32), np.ones(len(image.xyxy)), image.class_id)


def evaluate_detector(model: YOLOX, records: Sequence[Record], classes: Sequence[str],
                      input_size: tuple[int, int] = (480, 640), threshold: float = 0.001) -> dict:
    """Score a detector on boxed records the way the edge runs it.

    Returns:
        ``images``, ``boxes``, ``boxes_per_class``, ``ap50`` (class → COCO 101-point AP at IoU
        0.5, see ``average_precisions``; classes with ground truth only), ``map50`` (their mean;
        0.0 without any box), ``recall`` (share of truth boxes matched one-to-one at IoU 0.5 by a
        same-class detection scoring ≥ ``recall_threshold``, the manifest's 0.25) and
        ``failures`` (path, reason).
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
    per_class = average_precisions(truths, predictions, range(len(classes)))
    ap = {classes[k]: value for k, value in per_class.items() if value is not None}
    confident = [p[p.confidence >= MANIFEST_THRESHOLD] for p in predictions]
    recall, boxes = matched_recall(truths, confident)
    counts = Counter(classes[c] for t in truths for c in t.class_id)
    by_bucket = recall_by_bucket(truths, confident, [px.shape[:2] for px in pixels], classes)
    return {"images": len(kept), "boxes": boxes, "boxes_per_class": dict(counts), "ap50": ap,
            "map50": float(np.mean(list(ap.values()))) if ap else 0.0, "recall": float(recall),
            "recall_by_bucket": {k: round(r, 4) for k, (r, _) in by_bucket.items()},
            "recall_threshold": MANIFEST_THRESHOLD, "failures": failures}


def kept_detections(reference: YOLOX, model: YOLOX, records: Sequence[Record], input_size: tuple[int, int]) -> float:
    """Share of the reference model's boxes (score ≥ 0.25) that ``model`` also finds (same class,
    IoU ≥ 0.5, score ≥ 0.25): what fine-tuning kept of the pretrained detector, whatever the labels."""
    paths = list(dict.fromkeys(r.path for r in records))
    pixels = [decode_image(path, max_side=MAX_SIDE).rgb for path in paths]
    found = [detect(m, pixels, input_size, MANIFEST_THRESHOLD) for m in (reference, model)]
    return float(matched_recall(*found)[0])
