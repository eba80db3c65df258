"""Fitting the fusion curves (``central.fusion.FusionModel``) to researchers' verdicts.

Before ``min_pairs`` confirmed *and* ``min_pairs`` rejected pairs exist, ``fusion.PRIOR`` is used (fitted
on lion train pairs with an embedder that never saw lions; see ``central.fusion``). Afterwards both
curves are refitted by logistic regression on the verdicts' evidence (the standardised cosine and
the inliers recorded when the pair was proposed), with a Gaussian penalty pulling the weights towards
the prior's: a handful of verdicts moves the curve a little, hundreds move it to what they say.
Newton's method on a few numbers; no dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from central.fusion import PRIOR, FusionModel

PRIOR_WEIGHT = 2.0  # strength of the pull towards the prior, in units of one pair's information


@dataclass(frozen=True)
class PairEvidence:
    """A verdict and the evidence its pair was proposed with (``inliers`` None: no local matching)."""

    z: float
    inliers: int | None
    same: bool


def fit(features: np.ndarray, same: np.ndarray, centre: np.ndarray | None = None, l2: float = 1e-3,
        steps: int = 50) -> np.ndarray:
    """Logistic regression of ``same`` (0/1) on (N, F) ``features`` plus a bias; returns F + 1 weights.

    Args:
        features: one row per pair.
        same: 1 where the pair shows one individual.
        centre: weights the L2 penalty pulls towards (zeros by default).
        l2: penalty strength.
        steps: Newton steps at most.
    """
    x = np.concatenate([np.asarray(features, np.float64).reshape(len(same), -1), np.ones((len(same), 1))], axis=1)
    y = np.asarray(same, np.float64)
    centre = np.zeros(x.shape[1]) if centre is None else np.asarray(centre, np.float64)
    w = centre.copy()
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        gradient = x.T @ (p - y) + l2 * (w - centre)
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hessian, gradient)
        before = _loss(x, y, w, centre, l2)
        while _loss(x, y, w - step, centre, l2) > before and np.abs(step).max() > 1e-12:
            step /= 2  # damped Newton: separable verdicts would make the full step overshoot
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w


def _loss(x: np.ndarray, y: np.ndarray, w: np.ndarray, centre: np.ndarray, l2: float) -> float:
    logits = x @ w
    return float(np.sum(np.logaddexp(0, logits) - y * logits) + 0.5 * l2 * np.sum((w - centre) ** 2))


def calibrate(pairs: list[PairEvidence], min_pairs: int = 5, prior: FusionModel = PRIOR) -> FusionModel:
    """The prior refitted on the verdicts' evidence, or the prior itself if too few of either kind."""
    positives = sum(p.same for p in pairs)
    negatives = len(pairs) - positives
    if positives < min_pairs or negatives < min_pairs:
        return prior
    z = np.array([p.z for p in pairs])
    same = np.array([p.same for p in pairs], np.float64)
    cosine_only = fit(z[:, None], same, np.array(prior.cosine_only), PRIOR_WEIGHT)
    local = [i for i, p in enumerate(pairs) if p.inliers is not None]
    fused = np.array(prior.fused)
    if local:
        features = np.stack([z[local], np.log1p([pairs[i].inliers for i in local])], axis=1)
        fused = fit(features, same[local], fused, PRIOR_WEIGHT)
    return FusionModel(tuple(map(float, fused)), tuple(map(float, cosine_only)), positives, negatives)
