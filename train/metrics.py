"""Classification metrics in plain numpy: confusion matrix, per-class report, ROC and AUC."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        y_true: true class indices in ``[0, k)``.
        y_pred: predicted class indices in ``[0, k)``, same length.
        k: number of classes.

    Returns:
        (k, k) int64 matrix; rows are true classes, columns predictions.

    Raises:
        ValueError: lengths differ or an index is outside ``[0, k)``.
    """
    true, pred = np.asarray(y_true, np.int64).ravel(), np.asarray(y_pred, np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} entries, y_pred {pred.size}")
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= k):
        raise ValueError(f"class indices must lie in [0, {k})")
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (no predictions or no examples of a class)."""
    return np.divide(num, den, out=np.zeros(num.shape, np.float64), where=den > 0)


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Top-1 accuracy, macro-F1 and per-class precision, recall, F1 and support.

    Macro-F1 averages the classes that occur among the true or the predicted labels: a class
    absent from both (e.g. a rare species missing from a small validation split) neither helps
    nor hurts. A class never predicted has precision 0.

    Returns:
        ``{"n", "top1", "macro_f1", "per_class": {label: {"precision", "recall", "f1", "support"}},
        "confusion": k x k nested list}``.
    """
    k = len(labels)
    matrix = confusion_matrix(y_true, y_pred, k)
    hits = np.diag(matrix).astype(np.float64)
    support, predicted = matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall = _ratio(hits, predicted), _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    n = int(matrix.sum())
    return {
        "n": n,
        "top1": float(hits.sum() / n) if n else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion": matrix.tolist(),
    }


def roc_curve(scores: Sequence[float], positives: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of a score that should be high for positives.

    One point per distinct score (ties move together), starting at (0, 0) with threshold +inf.

    Args:
        scores: one score per example.
        positives: whether each example is a positive.

    Returns:
        (fpr, tpr, thresholds): predicting positive for ``score >= thresholds[i]`` gives
        false-positive rate ``fpr[i]`` and true-positive rate ``tpr[i]``.

    Raises:
        ValueError: lengths differ, or there are no positives or no negatives.
    """
    score = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(positives, bool).ravel()
    if score.shape != positive.shape:
        raise ValueError(f"{score.size} scores but {positive.size} positives flags")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC needs both positives and negatives")
    order = np.argsort(-score, kind="stable")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tp = np.cumsum(positive)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    return (np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, score[last_of_tie]])


def auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Area under a curve by the trapezoid rule (``x`` non-decreasing, as ``roc_curve`` gives)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("auc needs two equally long arrays of at least 2 points")
    if np.any(np.diff(x) < 0):
        raise ValueError("auc needs non-decreasing x")
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
