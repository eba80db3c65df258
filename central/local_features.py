"""Local keypoint features of a crop and the geometric match count of two crops.

RootSIFT (Arandjelović & Zisserman 2012: SIFT descriptors L1-normalised and square-rooted, so that
Euclidean distance compares them as the Hellinger kernel) on a contrast-equalised grey crop scaled
so that its longer side is ``LONG_SIDE`` pixels (small crops are enlarged, camera-trap crops are often
150 px). At most ``MAX_KEYPOINTS`` of the strongest keypoints are kept and the descriptors are
quantised to bytes: one crop's features take about 60 kB, computed once per sighting and cached
(``central.evidence_store``). 450 keypoints rather than 300: on ``reid/lion/train`` with the default
bundle (shortlist 300) rank-1 / top-5 / mAP 0.323 / 0.397 / 0.100 → 0.335 / 0.429 / 0.106 (local
matching alone, every 4th anchor: 0.376 with 300, 0.409 with 450, 0.403 with 600; fewer pixels, 256 px,
0.369; no contrast equalisation 0.356). Tried with 450 and not taken: ratio 0.85 (lion train, shortlist 600:
0.402 / 0.498 / 0.124 against 0.404 / 0.497 / 0.130 at 0.8, 30 % slower, and 'new individual' recall at
0.1 falls 0.92 → 0.66), ratio 0.75 and upright descriptors (keypoint angles set to 0; local matching
alone, every 4th anchor, 0.356 and 0.356 against 0.409); counting a pair's inliers by the grid cells they
cover in both crops, so that chance matches clustered on one patch count once (lion train, shortlist 600,
rank-1 0.340 with 20 px cells, 0.391 with 10 px, against 0.404: true matches on lions are no more spread out).

Two crops are compared by Lowe's ratio test on nearest descriptors (``ratio_matches``: one matrix
product, the same matches as OpenCV's brute-force ``knnMatch``, ~0.7 ms a pair at 450 keypoints against
~2 ms) and RANSAC on the putative
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
MAX_KEYPOINTS = 450
RATIO = 0.8
MIN_MATCHES = 8  # fewer putative matches are no evidence of a shared pattern
RANSAC_PIXELS = 6.0
_SIFT = cv2.SIFT_create(nfeatures=MAX_KEYPOINTS)
_CLAHE = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
_blas_limited = False


def one_blas_thread() -> None:
    """Run this process's BLAS on one thread from now on (threadpoolctl; once a process).

    A query's local matching is hundreds of small products (450 x 128 by 128 x 450 a pair). Shared out
    among BLAS's threads they cost ~1.7x the CPU, and where other work holds a core (ingest, a training
    run, another service) the threads wait on each other. Measured on a 2-core AMD EPYC, whole fused
    top-5 at 10,000 images (``central bench --matching``): idle, median 472-480 ms with one thread against
    351-552 ms with the default two (user CPU 31 s against 52 s a run); with one core held by a busy loop,
    472 ms (p95 482) against 1,110 ms (p95 1,547), past the 1 s budget, so the shortlist was cut short. On
    300 lion crop pairs: 0.77 ms a match against 1.2-6.3 ms beside a busy process. The central service,
    ``central evaluate`` and ``central bench`` reach it through ``ratio_matches``."""
    global _blas_limited
    if not _blas_limited:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1, user_api="blas")
        _blas_limited = True


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
    query, train = ratio_matches(a.descriptors, b.descriptors)
    source, target = a.points[query].reshape(-1, 2), b.points[train].reshape(-1, 2)
    if len(query) < MIN_MATCHES:
        return Matches(source, target, np.zeros(len(query), bool))
    _, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS,
                                          maxIters=500)
    inlier = np.zeros(len(query), bool) if mask is None else mask.ravel().astype(bool)
    return Matches(source, target, inlier)


def ratio_matches(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices (into ``a``, into ``b``) of the descriptors of ``a`` whose nearest descriptor in ``b`` (Euclidean)
    is nearer than ``RATIO`` times the second nearest: Lowe's ratio test, as OpenCV's brute-force
    ``knnMatch(k=2)`` gives it, computed as one matrix product (about 3x faster at 450 keypoints a crop) on one
    BLAS thread (``one_blas_thread``)."""
    one_blas_thread()
    a_, b_ = a.astype(np.float32), b.astype(np.float32)
    squared = (b_ * b_).sum(axis=1)[None, :] - 2.0 * (a_ @ b_.T)  # |b|^2 - 2ab: |a-b|^2 less |a|^2, a row's constant
    rows = np.arange(len(a_))
    nearest = np.argmin(squared, axis=1)
    first = squared[rows, nearest]
    squared[rows, nearest] = np.inf
    second = squared.min(axis=1)
    norms = (a_ * a_).sum(axis=1)
    first, second = np.sqrt(np.maximum(first + norms, 0.0)), np.sqrt(np.maximum(second + norms, 0.0))
    query = np.flatnonzero(first < RATIO * second)
    return query, nearest[query]


def inliers(a: LocalFeatures, b: LocalFeatures) -> int:
    """RANSAC inliers of one similarity among the ratio-test matches of two crops (0 without support)."""
    return match(a, b).inliers
