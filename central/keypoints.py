"""The matched keypoints of two crops, for the review page to draw between them.

The matcher's own local features (``central.local_features``: RootSIFT on the contrast-equalised
grey crop scaled to ``LONG_SIDE``), Lowe's ratio test and RANSAC on a homography, as it counts its
inliers; here the inlier pairs themselves are kept. Coordinates are fractions of each crop's width
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
    fractions of each crop's size; ``matches`` passed the ratio test, ``inliers`` fit the homography."""

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
    none = np.zeros((0, 4), np.float32)
    if len(a) < local_features.MIN_MATCHES or len(b) < 2:
        return MatchedPairs(none, 0, 0)
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), k=2)
    good = [p[0] for p in knn if len(p) == 2 and p[0].distance < local_features.RATIO * p[1].distance]
    if len(good) < local_features.MIN_MATCHES:
        return MatchedPairs(none, len(good), 0)
    source, target = a.points[[m.queryIdx for m in good]], b.points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(source, target, cv2.RANSAC, local_features.RANSAC_PIXELS, maxIters=500)
    if mask is None:
        return MatchedPairs(none, len(good), 0)
    keep = mask.ravel().astype(bool)
    pairs = np.hstack([source[keep] / a_size, target[keep] / b_size])
    return MatchedPairs(pairs[:MAX_PAIRS].astype(np.float32), len(good), int(keep.sum()))
