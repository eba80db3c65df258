"""YOLOX decoding and non-maximum suppression in numpy.

The exported detector ends at the head's raw convolutions (box regression in grid units,
objectness and class logits); decoding and NMS run here, outside the quantized graph.
"""

from __future__ import annotations

import numpy as np


def make_grid(size: tuple[int, int], strides: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Anchor-point grid (A, 2) in cell units and the stride of each point (A, 1)."""
    grids, stride_col = [], []
    for stride in strides:
        gh, gw = size[0] // stride, size[1] // stride
        ys, xs = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        grids.append(np.stack([xs, ys], axis=-1).reshape(-1, 2))
        stride_col.append(np.full((gh * gw, 1), stride))
    return np.concatenate(grids).astype(np.float32), np.concatenate(stride_col).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))  # clipped: no overflow warning for far-off logits


def decode_yolox(raw: np.ndarray, grid: np.ndarray, strides: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw head output of one image (A, 5 + C) → boxes (A, 4) xyxy in input pixels and scores (A, C).

    Score of a class = sigmoid(objectness) * sigmoid(class logit), as in YOLOX.
    """
    centre = (raw[:, :2] + grid) * strides
    half = np.exp(np.minimum(raw[:, 2:4], 20.0)) * strides / 2
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    scores = _sigmoid(raw[:, 4:5]) * _sigmoid(raw[:, 5:])
    return boxes.astype(np.float32), scores.astype(np.float32)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box against (N, 4) boxes."""
    ix1 = np.maximum(box[0], boxes[:, 0])
    iy1 = np.maximum(box[1], boxes[:, 1])
    ix2 = np.minimum(box[2], boxes[:, 2])
    iy2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression.

    Returns:
        Indices of the kept boxes, highest score first. Ties keep the lower index.
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[box_iou(boxes[best], boxes[rest]) <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each class only (boxes of different classes never suppress each other)."""
    if boxes.size == 0:
        return np.zeros(0, np.int64)
    offset = class_ids.astype(np.float32)[:, None] * (boxes.max() + 1.0)
    return nms(boxes + offset, scores, iou_threshold)


def postprocess(
    raw: np.ndarray,
    grid: np.ndarray,
    strides: np.ndarray,
    confidence: float,
    iou_threshold: float,
    max_detections: int = 100,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode, threshold (best class per anchor) and NMS one image's raw output.

    Returns:
        xyxy (N, 4) in input pixels, scores (N,), class ids (N,), best first.
    """
    boxes, scores = decode_yolox(raw, grid, strides)
    class_ids = scores.argmax(axis=1)
    best = scores[np.arange(len(scores)), class_ids]
    mask = best >= confidence
    boxes, best, class_ids = boxes[mask], best[mask], class_ids[mask]
    keep = batched_nms(boxes, best, class_ids, iou_threshold)[:max_detections]
    return boxes[keep], best[keep], class_ids[keep]
