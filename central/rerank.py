"""Re-ranking by local features: SIFT keypoints, Lowe's ratio test, RANSAC homography inliers.

Spot and stripe patterns survive pose and light changes better than a global embedding, so the
number of geometrically consistent matches between two crops is a strong same-individual signal
(the idea behind HotSpotter and SpotID's matching). Only crops are compared; a pair without one
scores 0 inliers.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import cv2
import numpy as np

from central.ingest import Sighting

MAX_SIDE = 400  # crops are compared at this longest side: enough spots, bounded cost
RATIO = 0.8
MIN_MATCHES = 8  # fewer putative matches cannot support a homography
# Fewer inliers than this are chance (different SpotID leopards: 90th percentile 6, same: median
# 103); such candidates keep their cosine order, behind every candidate with real geometric support.
MIN_INLIERS = 12


@dataclass(frozen=True)
class Features:
    """Keypoint coordinates (N, 2) and SIFT descriptors (N, 128) of one crop."""

    points: np.ndarray
    descriptors: np.ndarray | None


_SIFT = cv2.SIFT_create(nfeatures=1000)
_CACHE: OrderedDict[str, Features] = OrderedDict()


def features_of(jpeg: bytes) -> Features:
    """SIFT features of a JPEG, converted to grey and scaled to ``MAX_SIDE``."""
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None:
        return Features(np.zeros((0, 2), np.float32), None)
    scale = MAX_SIDE / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    grey = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(grey)
    keypoints, descriptors = _SIFT.detectAndCompute(grey, None)
    return Features(np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors)


def cached_features(sighting: Sighting, size: int = 4096) -> Features | None:
    """Features of a sighting's crop, remembered for the last ``size`` sightings."""
    if sighting.crop_jpeg is None:
        return None
    if sighting.id not in _CACHE:
        _CACHE[sighting.id] = features_of(sighting.crop_jpeg)
        if len(_CACHE) > size:
            _CACHE.popitem(last=False)
    return _CACHE[sighting.id]


def inliers(a: Features, b: Features) -> int:
    """RANSAC homography inliers among ratio-test matches of two crops' features."""
    if a.descriptors is None or b.descriptors is None or len(a.points) < 2 or len(b.points) < 2:
        return 0
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors, b.descriptors, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    if len(good) < MIN_MATCHES:
        return 0
    source = a.points[[m.queryIdx for m in good]]
    target = b.points[[m.trainIdx for m in good]]
    _, mask = cv2.findHomography(source, target, cv2.RANSAC, 8.0)
    return 0 if mask is None else int(mask.sum())


def rerank_order(counts: list[int]) -> list[int]:
    """Indices of cosine-ordered candidates re-ordered: supported ones by inliers, the rest as they were."""
    support = [n if n >= MIN_INLIERS else 0 for n in counts]
    return sorted(range(len(counts)), key=lambda i: (-support[i], i))


def inlier_counts(anchor: Sighting, candidates: list[Sighting | None]) -> list[int]:
    """Inliers between the anchor's crop and each candidate's (0 where either has none)."""
    mine = cached_features(anchor)
    counts = []
    for candidate in candidates:
        theirs = cached_features(candidate) if candidate is not None else None
        counts.append(0 if mine is None or theirs is None else inliers(mine, theirs))
    return counts
