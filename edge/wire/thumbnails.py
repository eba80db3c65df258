"""Size-capped JPEG thumbnails of detection crops, blurred where privacy requires."""

from __future__ import annotations

import cv2
import numpy as np

from edge.runtime.preprocess import crop_region


def blur(rgb: np.ndarray) -> np.ndarray:
    """Pixelate then smooth: nothing identifiable survives (people, number plates)."""
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, w // 16), max(1, h // 16)), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST), (0, 0), 3)


def thumbnail_jpeg(rgb: np.ndarray, xyxy: np.ndarray, max_side: int = 320, max_bytes: int = 40_000,
                   blurred: bool = False, margin: float = 0.15) -> tuple[bytes, tuple[int, int]]:
    """JPEG of one detection crop, at most ``max_side`` pixels and ``max_bytes`` bytes.

    Quality is lowered, then the size halved, until the file fits.

    Returns:
        The JPEG bytes and its (width, height).
    """
    left, top, right, bottom = crop_region(xyxy, rgb.shape[:2], margin, square=False)
    patch = rgb[top:bottom, left:right]
    scale = min(1.0, max_side / max(patch.shape[:2]))
    if scale < 1:
        patch = cv2.resize(patch, (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    if blurred:
        patch = blur(patch)
    bgr = cv2.cvtColor(np.ascontiguousarray(patch), cv2.COLOR_RGB2BGR)
    while True:
        for quality in (85, 70, 55, 40, 30):
            ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if ok and len(data) <= max_bytes:
                return data.tobytes(), (bgr.shape[1], bgr.shape[0])
        if max(bgr.shape[:2]) <= 16:
            return data.tobytes(), (bgr.shape[1], bgr.shape[0])
        bgr = cv2.resize(bgr, (max(1, bgr.shape[1] // 2), max(1, bgr.shape[0] // 2)), interpolation=cv2.INTER_AREA)
