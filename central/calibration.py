"""Cosine similarity -> probability that two images show the same individual.

A logistic curve ``p = 1 / (1 + exp(-(slope * cosine + intercept)))``. Until the researcher has
confirmed and rejected enough pairs (``min_pairs`` of each), ``DEFAULT`` is used: it puts
p = 0.5 at cosine 0.90 and p = 0.88 at 1.0, a cautious prior for the default bundle's
embedder: on the SpotID leopard crops its same-individual pairs have median cosine 0.86 and
its different-individual pairs 0.82 (90th percentile 0.90), so below 0.9 the cosine alone
says little (see central/README.md). Once there are enough verdicts, the curve is fitted to them by
L2-regularised logistic regression (Newton's method; a few dozen numbers, no dependency).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from central.store import Decision


@dataclass(frozen=True)
class Calibration:
    """A fitted (or default) logistic curve and how many pairs it came from."""

    slope: float
    intercept: float
    positives: int = 0
    negatives: int = 0

    @property
    def fitted(self) -> bool:
        return self.positives > 0

    def probability(self, cosine: np.ndarray | float) -> np.ndarray | float:
        """Same-individual probability for one or many cosines."""
        z = self.slope * np.asarray(cosine, np.float64) + self.intercept
        p = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))
        return float(p) if np.ndim(p) == 0 else p


DEFAULT = Calibration(slope=20.0, intercept=-18.0)


def fit(cosines: np.ndarray, same: np.ndarray, l2: float = 1e-3, steps: int = 50) -> tuple[float, float]:
    """Logistic regression of ``same`` (0/1) on ``cosines``; returns (slope, intercept)."""
    x = np.stack([np.asarray(cosines, np.float64), np.ones(len(cosines))], axis=1)
    y = np.asarray(same, np.float64)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        gradient = x.T @ (p - y) + l2 * w
        hessian = (x * (p * (1 - p))[:, None]).T @ x + l2 * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return float(w[0]), float(w[1])


def calibrate(decisions: list[Decision], min_pairs: int = 5) -> Calibration:
    """The curve fitted to the verdicts that carry a cosine, or ``DEFAULT`` if too few of either kind."""
    pairs = [(d.cosine, d.verdict == "match") for d in decisions if d.cosine is not None]
    positives = sum(1 for _, same in pairs if same)
    negatives = len(pairs) - positives
    if positives < min_pairs or negatives < min_pairs:
        return DEFAULT
    cosines, same = (np.array(column) for column in zip(*pairs))
    slope, intercept = fit(cosines, same)
    return Calibration(slope, intercept, positives, negatives)
