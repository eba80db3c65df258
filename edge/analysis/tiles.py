"""A second look for small and far animals: the frame cut into overlapping tiles, each run through
the detector at the detector's own input size (so a tile's animal is seen larger), merged with the
first pass (SAHI-style: class-wise NMS, then a box mostly inside a better box of its class dropped).

Pure functions of arrays; ``Analyzer`` decides when to look twice (``SecondLookConfig.when``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.runtime.detections import Detections
from edge.runtime.yolox import batched_nms


class SecondLookConfig(BaseModel):
    """When and how the detector looks at a frame a second time, in tiles."""

    model_config = ConfigDict(extra="forbid")
    when: Literal["never", "no_box", "large", "no_box_or_large"] = Field(
        "no_box", title="never; when the first pass found no box (the gate let the frame through); on large frames; "
                        "or either")
    large_side: int = Field(1600, ge=32, title="A frame whose longer side has at least this many pixels is large")
    min_side: int = Field(1600, ge=0, title="Frames whose longer side is shorter never get a second look: tiles of a "
                                            "small (or downsized) frame hold no detail the first pass missed")
    grid: tuple[Annotated[int, Field(ge=1, le=8)], Annotated[int, Field(ge=1, le=8)]] = Field(
        (2, 2), title="Tiles (rows, columns), 1 to 8 each (a frame of 0 tiles divided by zero; 300 x 300 tiles "
                      "held 24 GB)")
    overlap: float = Field(0.2, ge=0, lt=0.5, title="Share of a tile that overlaps its neighbour")
    nms_iou: float = Field(0.45, gt=0, le=1, title="IoU above which merged boxes of one class are duplicates")
    contained: float = Field(0.8, gt=0, le=1, title="A box this much inside a better box of its class is a part of it")

    def wanted(self, image_hw: tuple[int, int], first_pass: int) -> bool:
        """Whether a frame of this size, whose first pass found ``first_pass`` boxes, gets a second look."""
        large = max(image_hw) >= self.large_side
        if max(image_hw) < self.min_side:
            return False
        return {"never": False, "no_box": first_pass == 0, "large": large,
                "no_box_or_large": first_pass == 0 or large}[self.when]


def tile_windows(image_hw: tuple[int, int], grid: tuple[int, int], overlap: float) -> list[tuple[int, int, int, int]]:
    """``(x0, y0, x1, y1)`` of each tile, rows then columns, covering the image with ``overlap``."""
    (h, w), (rows, cols) = image_hw, grid
    th, tw = h / (rows - (rows - 1) * overlap), w / (cols - (cols - 1) * overlap)
    return [(round(c * tw * (1 - overlap)), round(r * th * (1 - overlap)),
             min(w, round(c * tw * (1 - overlap) + tw)), min(h, round(r * th * (1 - overlap) + th)))
            for r in range(rows) for c in range(cols)]


def _contained_in_better(det: Detections, share: float) -> np.ndarray:
    """Boxes (best first) that lie ``share`` or more inside a better-scoring box of their class."""
    keep = np.ones(len(det), bool)
    area = np.prod(np.clip(det.xyxy[:, 2:] - det.xyxy[:, :2], 0, None), axis=1)
    for i in range(len(det)):
        for j in range(i):
            if not keep[j] or det.class_id[j] != det.class_id[i] or area[i] <= 0:
                continue
            lo, hi = np.maximum(det.xyxy[i, :2], det.xyxy[j, :2]), np.minimum(det.xyxy[i, 2:], det.xyxy[j, 2:])
            if np.prod(np.clip(hi - lo, 0, None)) / area[i] >= share:
                keep[i] = False
                break
    return keep


def merge(parts: list[Detections], nms_iou: float, contained: float) -> Detections:
    """One set of boxes from the first pass and the tiles: class-wise NMS, best first, then parts of
    a better box (a tile's cut-off half of an animal the full frame saw whole) dropped."""
    if not parts:
        return Detections.empty()
    xyxy = np.concatenate([p.xyxy for p in parts]).astype(np.float32)
    det = Detections(xyxy, np.concatenate([p.confidence for p in parts]).astype(np.float32),
                     np.concatenate([p.class_id for p in parts]).astype(np.int64))
    det = det[batched_nms(det.xyxy, det.confidence, det.class_id, nms_iou)]
    return det[_contained_in_better(det, contained)]


def second_look(image: np.ndarray, first: Detections, detect_batch: Callable[[list[np.ndarray]], list[Detections]],
                config: SecondLookConfig) -> Detections:
    """The first pass merged with the detector's boxes in each tile of ``image``."""
    windows = tile_windows(image.shape[:2], config.grid, config.overlap)
    found = detect_batch([image[y0:y1, x0:x1] for x0, y0, x1, y1 in windows])
    tiles = [det.shifted(x0, y0) for det, (x0, y0, _, _) in zip(found, windows)]
    return merge([first, *tiles], config.nms_iou, config.contained)
