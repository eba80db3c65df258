"""The one typed value that flows between the edge's stages."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Detections:
    """Boxes found in one image, with per-box columns added by later stages.

    Attributes:
        xyxy: (N, 4) float32 boxes in source-image pixels, ``x1, y1, x2, y2``.
        confidence: (N,) float32 detector scores in [0, 1].
        class_id: (N,) int64 indices into the detector's labels.
        data: per-box columns, each with N rows: ``species_probs`` (N, K) from the classifier,
            ``embedding`` (N, D) from the embedder, and the box's one final label decided by
            ``edge.analysis.labels.combine_labels``: ``label`` (N,) str, ``label_score`` (N,),
            ``label_source`` (N,) str, ``label_probs`` (N, L), ``embedded`` (N,) bool.
    """

    xyxy: np.ndarray
    confidence: np.ndarray
    class_id: np.ndarray
    data: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float32)
        self.xyxy = xyxy.reshape(0, 4) if xyxy.size == 0 else xyxy
        self.confidence = np.asarray(self.confidence, dtype=np.float32)
        self.class_id = np.asarray(self.class_id, dtype=np.int64)
        n = len(self.xyxy)
        if self.xyxy.ndim != 2 or self.xyxy.shape[1] != 4:
            raise ValueError(f"xyxy must have shape (N, 4), got {self.xyxy.shape}")
        for name, arr in (("confidence", self.confidence), ("class_id", self.class_id)):
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},), got {arr.shape}")
        for key, arr in self.data.items():
            if len(arr) != n:
                raise ValueError(f"data[{key!r}] has {len(arr)} rows, expected {n}")

    @classmethod
    def empty(cls) -> Detections:
        """No boxes."""
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: int | slice | np.ndarray | list[int]) -> Detections:
        """Select boxes by index, slice, index array or boolean mask (always returns Detections)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(
            self.xyxy[index],
            self.confidence[index],
            self.class_id[index],
            {key: arr[index] for key, arr in self.data.items()},
        )

    def with_data(self, **arrays: np.ndarray) -> Detections:
        """A copy with extra per-box columns (validated like the constructor's)."""
        return Detections(self.xyxy, self.confidence, self.class_id, {**self.data, **arrays})

    def shifted(self, dx: float, dy: float) -> Detections:
        """A copy with every box moved by (dx, dy) pixels (e.g. back over a trimmed info bar)."""
        offset = np.array([dx, dy, dx, dy], np.float32)
        return Detections(self.xyxy + offset, self.confidence, self.class_id, self.data)

    def labels(self) -> list[str]:
        """Each box's final label (``data["label"]``); raises when the labels were never decided."""
        if "label" not in self.data:
            raise KeyError("these detections carry no final label: run them through the Analyzer")
        return [str(label) for label in self.data["label"]]

    def normalised_xywh(self, image_hw: tuple[int, int]) -> list[list[float]]:
        """Boxes as normalised ``[x, y, w, h]`` rounded to 4 decimals (the MegaDetector convention)."""
        h, w = image_hw
        x1, y1, x2, y2 = (self.xyxy.astype(np.float64) / [w, h, w, h]).clip(0, 1).T
        return np.round(np.stack([x1, y1, x2 - x1, y2 - y1], axis=1), 4).tolist()
