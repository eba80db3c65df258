"""Local keypoint features of a crop and the geometric match count of two crops.

RootSIFT (Arandjelović & Zisserman 2012: SIFT descriptors L1-normalised and square-rooted, so that
Euclidean distance compares them as the Hellinger kernel) on a contrast-equalised grey crop scaled
so that its longer side is ``LONG_SIDE`` pixels (small crops are enlarged, camera-trap crops are often
150 px). At most ``MAX_KEYPOINTS`` of the strongest keypoints are kept and the descriptors are
quantised to bytes: one crop's features take about 40 kB, computed once per sighting and cached
(``central.feature_cache``).

Two crops are compared by Lowe's ratio test on nearest descriptors and RANSAC on the putative
matches with a similarity (rotation, uniform scale, shift: ``cv2.estimateAffinePartial2D``): the
same flank or face seen at another distance and tilt. The number of inliers is the local evidence
that the same pattern is shown in both. A similarity has 4 degrees of freedom where a homography has
8, so chance matches of two different animals agree on one less often: chosen on ``reid/lion/train``
with the default bundle (rank-1 0.291 with a homography, 0.323 with a similarity, 0.313 with a full
affine; 0.327 / 0.320 with 4 / 10 px), which also leaves the review page's lines (``keypoints.py``)
where they belong more often.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import cv2
import numpy as np

LONG_SIDE = 320
MAX_KEYPOINTS = 300
RATIO = 0.8
MIN_MATCHES = 8  # fewer putative matches are no evidence of a shared pattern
RANSAC_PIXELS = 6.0
_SIFT = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoint positions (N, 2) float32 and RootSIFT descriptors (N, 128) uint8 (x 1/255) of one crop."""

    points: np.ndarray
    descriptors: np.ndarray

    def __post_init__(self):
        if self.points.shape != (len(self.descriptors), 2) or self.descriptors.shape[1:] != (128,):
            raise ValueError(f"points {self.points.shape} and descriptors {self.descriptors.shape} do not agree")

    def __len__(self) -> int:
        return len(self.points)

    def to_bytes(self) -> bytes:
        """A compact serialisation (``np.savez``) for the on-disk cache."""
        buffer = io.BytesIO()
        np.savez(buffer, points=self.points.astype(np.float32), descriptors=self.descriptors.astype(np.uint8))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> LocalFeatures:
        with np.load(io.BytesIO(blob)) as arrays:
            return cls(arrays["points"], arrays["descriptors"])


EMPTY = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.uint8))


def extract(jpeg: bytes) -> LocalFeatures:
    """RootSIFT features of an encoded image (EMPTY when it does not decode)."""
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
    if grey is None or min(grey.shape) < 8:
        return EMPTY
    scale = LONG_SIDE / max(grey.shape)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    grey = _CLAHE.apply(cv2.resize(grey, None, fx=scale, fy=scale, interpolation=interpolation))
    keypoints, descriptors = _SIFT.detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return EMPTY
    strongest = np.argsort([-k.response for k in keypoints], kind="stable")[:MAX_KEYPOINTS]
    points = np.float32([keypoints[i].pt for i in strongest])
    return LocalFeatures(points, root_sift(descriptors[strongest]))


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """SIFT descriptors -> RootSIFT (unit L2 norm), quantised to uint8."""
    d = np.asarray(descriptors, np.float32)
    d = np.sqrt(d / np.maximum(d.sum(axis=1, keepdims=True), 1e-7))
    return np.clip(np.rint(d * 255), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Matches:
    """The ratio-test matches of two crops: ``source`` and ``target`` points (M, 2) and which of them
    are RANSAC inliers of one similarity (``inlier`` (M,) bool)."""

    source: np.ndarray
    target: np.ndarray
    inlier: np.ndarray

    @property
    def inliers(self) -> int:
        return int(self.inlier.sum())


NO_MATCHES = Matches(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, bool))


def match(a: LocalFeatures, b: LocalFeatures) -> Matches:
    """Lowe's ratio test on nearest RootSIFT descriptors, then RANSAC of a similarity on those matches
    (none are inliers below ``MIN_MATCHES`` matches)."""
    if len(a) < MIN_MATCHES or len(b) < 2:
        return NO_MATCHES
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(a.descriptors.astype(np.float32), b.descriptors.astype(np.float32), k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < RATIO * p[1].distance]
    source = a.points[[m.queryIdx for m in good]].reshape(-1, 2)
    target = b.points[[m.trainIdx for m in good]].reshape(-1, 2)
    if len(good) < MIN_MATCHES:
        return Matches(source, target, np.zeros(len(good), bool))
    _, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS,
                                          maxIters=500)
    inlier = np.zeros(len(good), bool) if mask is None else mask.ravel().astype(bool)
    return Matches(source, target, inlier)


def inliers(a: LocalFeatures, b: LocalFeatures) -> int:
    """RANSAC inliers of one similarity among the ratio-test matches of two crops (0 without support)."""
    return match(a, b).inliers
