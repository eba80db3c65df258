"""Pixels to model input, exactly as the manifest describes (shared with the exporter and training).

Pillow does the resizing: OpenCV would cost the appliance ~37 MB of resident memory for the same
work (``trapedge bench`` reports the peak RSS).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from edge.runtime.manifest import InputSpec

_FILTERS = {"linear": Image.Resampling.BILINEAR, "cubic": Image.Resampling.BICUBIC}


def resize(image: np.ndarray, size: tuple[int, int], interpolation: str) -> np.ndarray:
    """Resize an (h, w, 3) or (h, w) uint8 image to ``size`` (w, h).

    ``area`` averages the source pixels under each output pixel when shrinking (a box filter) and
    interpolates bilinearly when enlarging. ``linear`` and ``cubic`` shrink by the whole part of the
    factor first (pixel averaging, the fast integer path), then interpolate the rest with an
    antialiased filter: a plain bilinear alone aliases when shrinking more than 2x.
    """
    new_w, new_h = size
    h, w = image.shape[:2]
    if (w, h) == (new_w, new_h):
        return image
    pil = Image.fromarray(np.ascontiguousarray(image))
    if interpolation == "area":
        shrinking = new_w <= w and new_h <= h
        out = pil.resize((new_w, new_h), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)
    else:
        out = pil.resize((new_w, new_h), _FILTERS[interpolation], reducing_gap=1.0)
    return np.asarray(out)


@dataclass(frozen=True)
class Letterbox:
    """Where a source image landed inside the letterboxed input.

    ``input = source * ratio + (pad_x, pad_y)``.
    """

    ratio: float
    pad_x: int
    pad_y: int

    def to_source(self, xyxy: np.ndarray) -> np.ndarray:
        """Map boxes from input pixels back to source pixels."""
        offset = np.array([self.pad_x, self.pad_y, self.pad_x, self.pad_y], np.float32)
        return (xyxy - offset) / self.ratio


def letterbox(
    image: np.ndarray,
    size: tuple[int, int],
    pad_value: float = 0.0,
    anchor: str = "top_left",
    interpolation: str = "linear",
    fit_multiple: int | None = None,
) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio so the image fits ``size`` (h, w), then pad.

    Args:
        image: (H, W, 3) uint8 RGB.
        size: target (height, width).
        pad_value: fill for the padding.
        anchor: ``top_left`` puts the image at the origin (padding right/bottom, as the YOLOX
            camera-trap detector was trained); ``center`` pads evenly.
        interpolation: ``area``, ``linear`` or ``cubic``.
        fit_multiple: the canvas shrinks to the resized image, each side rounded up to a multiple of
            this (never beyond ``size``): the padding a model would compute and ignore is left out.

    Returns:
        The (h, w, 3) uint8 canvas and the ``Letterbox`` that maps boxes back.
    """
    out_h, out_w = size
    src_h, src_w = image.shape[:2]
    ratio = min(out_h / src_h, out_w / src_w)
    new_w, new_h = max(1, round(src_w * ratio)), max(1, round(src_h * ratio))
    if fit_multiple:
        step = fit_multiple
        out_h, out_w = min(out_h, -(-new_h // step) * step), min(out_w, -(-new_w // step) * step)  # rounded up
    resized = resize(image, (new_w, new_h), interpolation)
    pad_x, pad_y = ((out_w - new_w) // 2, (out_h - new_h) // 2) if anchor == "center" else (0, 0)
    canvas = np.full((out_h, out_w, 3), pad_value, dtype=np.uint8)
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = resized
    return canvas, Letterbox(ratio, pad_x, pad_y)


def crop_region(xyxy: np.ndarray, image_hw: tuple[int, int], margin: float, square: bool) -> tuple[int, int, int, int]:
    """Integer region to cut for one box: grown by ``margin`` per side, squared, clamped to the image."""
    x1, y1, x2, y2 = (float(v) for v in xyxy)
    w, h = x2 - x1, y2 - y1
    x1, y1, x2, y2 = x1 - margin * w, y1 - margin * h, x2 + margin * w, y2 + margin * h
    if square:
        cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
        x1, y1, x2, y2 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    img_h, img_w = image_hw
    left, top = int(np.clip(np.floor(x1), 0, img_w - 1)), int(np.clip(np.floor(y1), 0, img_h - 1))
    right, bottom = int(np.clip(np.ceil(x2), left + 1, img_w)), int(np.clip(np.ceil(y2), top + 1, img_h))
    return left, top, right, bottom


def crop(image: np.ndarray, xyxy: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Cut one detection out of an RGB image and resize it to the model's input size."""
    left, top, right, bottom = crop_region(xyxy, image.shape[:2], spec.crop_margin, spec.crop_square)
    out_h, out_w = spec.size
    return resize(image[top:bottom, left:right], (out_w, out_h), spec.interpolation)


def resize_whole(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The whole image as one crop (``--crop whole``)."""
    h, w = image.shape[:2]
    return crop(image, np.array([0, 0, w, h], np.float32), spec)


def model_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """One RGB image as a (1, 3, H, W) model input: letterboxed or cut whole, as ``spec`` says."""
    if spec.resize == "letterbox":
        canvas = letterbox(rgb, spec.size, spec.pad_value, spec.pad_anchor, spec.interpolation)[0]
    else:
        canvas = resize_whole(rgb, spec)
    return to_tensor([canvas], spec)


def to_tensor(images: list[np.ndarray] | np.ndarray, spec: InputSpec, dtype: type = np.float32) -> np.ndarray:
    """Stack (h, w, 3) uint8 RGB images into a normalised float32 NCHW batch, or with ``dtype`` uint8 the
    pixels as they are (a quantized graph that takes raw pixels; ``spec`` must then ask for none).

    Raises:
        ValueError: uint8 asked for a spec that scales or normalises.
    """
    batch = images if isinstance(images, np.ndarray) and images.ndim == 4 else np.stack(list(images))
    if np.dtype(dtype) == np.uint8:
        if not takes_pixels(spec):
            raise ValueError(f"a uint8 input needs raw pixels; this input scales by {spec.scale} with mean "
                             f"{spec.mean} and std {spec.std}")
        return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.uint8)
    tensor = np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32)
    if not takes_pixels(spec):  # the detector takes raw pixels: nothing to do
        std = np.asarray(spec.std, np.float32).reshape(1, 3, 1, 1)
        tensor *= np.float32(spec.scale) / std
        tensor -= np.asarray(spec.mean, np.float32).reshape(1, 3, 1, 1) / std
    return tensor


def takes_pixels(spec: InputSpec) -> bool:
    """Whether ``spec`` feeds the model its 0-255 pixels unchanged (no scale, mean or std)."""
    return spec.scale == 1 and all(m == 0 for m in spec.mean) and all(d == 1 for d in spec.std)
