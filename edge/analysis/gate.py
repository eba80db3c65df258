"""Empty-frame gate: skip the models when nothing moved since the last frame of the same source.

Frames are reduced to a small grey thumbnail (``size`` px wide); a cell counts as changed when it
differs from the reference by more than ``pixel_delta`` grey levels, and the frame passes when
more than ``threshold`` of its cells changed. The reference is the previous frame of the source
or a running average (``alpha``). Cost: a strided subsample, one box-filter resize and a
subtraction (``trapedge bench`` reports it as the ``gate`` stage).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field


class MotionGateConfig(BaseModel):
    """Motion gate settings."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, title="Skip detection on frames without motion")
    threshold: float = Field(0.01, ge=0, le=1, title="Share of changed cells needed to pass")
    pixel_delta: int = Field(18, ge=1, le=255, title="Grey-level change that counts a cell as changed")
    size: int = Field(96, ge=16, le=1024, title="Width of the grey thumbnail compared (at most 1024)")
    reference: Literal["previous", "running"] = Field(
        "previous", title="Compare with the previous frame or a running background")
    alpha: float = Field(0.2, gt=0, le=1, title="Running background update rate")


class MotionGate:
    """Per-source reference thumbnails and the pass/skip decision."""

    def __init__(self, config: MotionGateConfig):
        self.config = config
        self.references: dict[str, np.ndarray] = {}

    def _thumbnail(self, rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        size = (self.config.size, max(1, round(h * self.config.size / w)))
        step = max(1, w // (2 * self.config.size))  # stride first: area-averaging megapixels is the cost
        grey = Image.fromarray(np.ascontiguousarray(rgb[::step, ::step])).convert("L")
        return np.asarray(grey.resize(size, Image.Resampling.BOX), np.float32)

    def score(self, source_id: str, rgb: np.ndarray) -> float:
        """Share of cells that changed against this source's reference (1.0 for its first frame)."""
        thumb = self._thumbnail(rgb)
        reference = self.references.get(source_id)
        if reference is None or reference.shape != thumb.shape:
            self.references[source_id] = thumb
            return 1.0
        changed = float((np.abs(thumb - reference) > self.config.pixel_delta).mean())
        if self.config.reference == "running":
            self.references[source_id] = (1 - self.config.alpha) * reference + self.config.alpha * thumb
        else:
            self.references[source_id] = thumb
        return changed

    def passes(self, source_id: str, rgb: np.ndarray) -> tuple[bool, float]:
        """(run the models?, motion score). A disabled gate always passes and scores nan."""
        if not self.config.enabled:
            return True, float("nan")
        motion = self.score(source_id, rgb)
        return motion > self.config.threshold, motion
