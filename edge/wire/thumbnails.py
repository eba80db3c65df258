"""Size-capped JPEG thumbnails of detection crops, blurred where privacy requires."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from edge.runtime.preprocess import crop_region, resize


def blur(rgb: np.ndarray) -> np.ndarray:
    """Pixelate then smooth: nothing identifiable survives (people, number plates)."""
    h, w = rgb.shape[:2]
    small = Image.fromarray(resize(rgb, (max(1, w // 16), max(1, h // 16)), "area"))
    blocky = small.resize((w, h), Image.Resampling.NEAREST)
    return np.asarray(blocky.filter(ImageFilter.GaussianBlur(3)))


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


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
        patch = resize(patch, (max(1, round(patch.shape[1] * scale)), max(1, round(patch.shape[0] * scale))), "area")
    if blurred:
        patch = blur(patch)
    image = Image.fromarray(np.ascontiguousarray(patch))
    while True:
        for quality in (85, 70, 55, 40, 30):
            data = _jpeg(image, quality)
            if len(data) <= max_bytes:
                return data, image.size
        if max(image.size) <= 16:
            return data, image.size
        image = image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BOX)
