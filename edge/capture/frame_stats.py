"""Cheap per-frame facts, shared by the edge and the training side so they cannot drift:
burned-in info bars, infrared night frames, brightness.

All work on a strided subsample, so a 5 MP frame costs well under a millisecond.
"""

from __future__ import annotations

import numpy as np

BAR_MAX_FRACTION = 0.15  # an info bar is never taller than this share of the frame


def _bar_like_rows(rgb: np.ndarray) -> np.ndarray:
    """Per row: whether it looks like part of an info bar.

    A bar row is mostly one very dark or very bright colour (its median), with text a minority.
    """
    step = max(1, rgb.shape[1] // 256)
    grey = rgb[:, ::step].astype(np.int16).sum(axis=2) // 3
    median = np.median(grey, axis=1, keepdims=True)
    flat = (np.abs(grey - median) <= 4).mean(axis=1) >= 0.5
    extreme = (median[:, 0] <= 30) | (median[:, 0] >= 235)
    return flat & extreme


def _run_length(mask: np.ndarray) -> int:
    """Length of the run of True at the start of ``mask``."""
    return int(np.argmin(mask)) if not mask.all() else len(mask)


def detect_info_bars(rgb: np.ndarray) -> tuple[int, int]:
    """Rows of burned-in info bars at the top and bottom of a camera-trap frame.

    A bar is a run of bar-like rows (see ``_bar_like_rows``) from the edge, at most
    ``BAR_MAX_FRACTION`` of the height; runs under 1 % of the height are ignored.

    Returns:
        (top, bottom) row counts; (0, 0) for frames without bars.
    """
    h = rgb.shape[0]
    limit = max(1, int(h * BAR_MAX_FRACTION))
    top_rows, bottom_rows = _bar_like_rows(rgb[:limit]), _bar_like_rows(rgb[h - limit :])[::-1]
    minimum = max(2, h // 100)
    top, bottom = _run_length(top_rows), _run_length(bottom_rows)
    return (top if minimum <= top < limit else 0), (bottom if minimum <= bottom < limit else 0)


def trim_info_bars(rgb: np.ndarray, top: int, bottom: int) -> np.ndarray:
    """The frame without its bars (a view, no copy)."""
    return rgb[top : rgb.shape[0] - bottom] if (top or bottom) else rgb


def _subsample(rgb: np.ndarray, cells: int = 128) -> np.ndarray:
    step = max(1, max(rgb.shape[:2]) // cells)
    return rgb[::step, ::step].astype(np.int16)


def is_night(rgb: np.ndarray, tolerance: int = 6) -> bool:
    """Infrared night frame: red, green and blue equal (within ``tolerance``) almost everywhere."""
    sample = _subsample(rgb)
    spread = sample.max(axis=2) - sample.min(axis=2)
    return bool(np.mean(spread <= tolerance) > 0.98)


def mean_brightness(rgb: np.ndarray) -> float:
    """Mean brightness in [0, 1]."""
    return float(_subsample(rgb).mean() / 255.0)
