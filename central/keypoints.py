"""The matched keypoints of two crops, for the review page to draw between them.

The matcher's own local features and matches (``central.local_features``: RootSIFT on the
contrast-equalised grey crop scaled to ``LONG_SIDE``, Lowe's ratio test, RANSAC of a similarity), as
it counts its inliers; here the inlier pairs themselves are kept. Coordinates are fractions of each crop's width
and height, so the page can draw them at whatever size and zoom it shows the crops.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from central import local_features
from central.ingest import Sighting
from central.local_features import LocalFeatures

MAX_PAIRS = 300  # enough to see the agreement; a bounded answer
CACHE_SIZE = 256
_CACHE: OrderedDict[str, tuple[LocalFeatures, np.ndarray]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


@dataclass(frozen=True)
class MatchedPairs:
    """Inlier pairs of two crops: (N, 4) rows ``(anchor x, anchor y, candidate x, candidate y)`` as
    fractions of each crop's size; ``matches`` passed the ratio test, ``inliers`` fit the similarity."""

    pairs: np.ndarray
    matches: int
    inliers: int


def scaled_size(jpeg: bytes) -> np.ndarray:
    """(width, height) of the crop as ``local_features.extract`` measures points on it."""
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return np.float32([1, 1])
    scale = local_features.LONG_SIDE / max(grey.shape)
    return np.float32([round(grey.shape[1] * scale), round(grey.shape[0] * scale)])


def _cached(sighting: Sighting) -> tuple[LocalFeatures, np.ndarray]:
    with _CACHE_LOCK:
        if sighting.id in _CACHE:
            _CACHE.move_to_end(sighting.id)
            return _CACHE[sighting.id]
    found = local_features.extract(sighting.crop_jpeg), scaled_size(sighting.crop_jpeg)
    with _CACHE_LOCK:
        _CACHE[sighting.id] = found
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return found


def matched_pairs(anchor: Sighting, candidate: Sighting) -> MatchedPairs | None:
    """The RANSAC inlier pairs between two sightings' crops; None when either has no crop."""
    if anchor.crop_jpeg is None or candidate.crop_jpeg is None:
        return None
    (a, a_size), (b, b_size) = _cached(anchor), _cached(candidate)
    found = local_features.match(a, b)
    keep = found.inlier
    pairs = np.hstack([found.source[keep] / a_size, found.target[keep] / b_size]).reshape(-1, 4)
    return MatchedPairs(pairs[:MAX_PAIRS].astype(np.float32), len(keep), found.inliers)
