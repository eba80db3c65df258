"""Classification metrics on top of scikit-learn: confusion matrix, per-class report, ROC and AUC.

scikit-learn does the counting (the confusion matrix is a numpy ``bincount``); this module pins the
conventions the training reports rely on (fixed ``k`` classes, empty inputs allowed, macro-F1 over
present classes, ValueError on bad input).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics


def _indices(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Both label sequences as flat int64 arrays, checked to be equally long and within ``[0, k)``."""
    true, pred = np.asarray(y_true, np.int64).ravel(), np.asarray(y_pred, np.int64).ravel()
    if true.shape != pred.shape:
        raise ValueError(f"y_true has {true.size} entries, y_pred {pred.size}")
    # scikit-learn silently drops labels outside ``labels=``; an out-of-range index is a bug here.
    if true.size and (min(true.min(), pred.min()) < 0 or max(true.max(), pred.max()) >= k):
        raise ValueError(f"class indices must lie in [0, {k})")
    return true, pred


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], k: int) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    Args:
        y_true: true class indices in ``[0, k)``.
        y_pred: predicted class indices in ``[0, k)``, same length.
        k: number of classes.

    Returns:
        (k, k) int64 matrix; rows are true classes, columns predictions. All zeros for empty
        inputs (an empty night split is normal here).

    Raises:
        ValueError: lengths differ or an index is outside ``[0, k)``.
    """
    true, pred = _indices(y_true, y_pred, k)
    # counted directly: scikit-learn's warned 'a single label was found' whenever one class was scored
    # (out-of-range indices never get here: _indices refuses them)
    return np.bincount(true * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def _per_class(true: np.ndarray, pred: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 (0 where undefined; all 0 for empty inputs)."""
    if true.size == 0:
        return np.zeros(k), np.zeros(k), np.zeros(k)
    precision, recall, f1, _ = metrics.precision_recall_fscore_support(
        true, pred, labels=np.arange(k), average=None, zero_division=0)
    return precision, recall, f1


def classification_report(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict:
    """Top-1 accuracy, macro-F1 and per-class precision, recall, F1 and support.

    Macro-F1 averages the classes that occur among the true or the predicted labels: a class
    absent from both (e.g. a rare species missing from a small validation split) neither helps
    nor hurts. A class never predicted has precision 0. Empty inputs give ``n`` 0 and all-zero
    scores. ``macro_f1_reference`` averages only the classes among the true labels (scikit-learn's
    ``labels=`` the reference classes): a label that was only ever predicted (a stray ``Fox``, a
    roll-up such as ``felidae``) counts once, in the recall of the class it took frames from, not
    again as a class of F1 0 that no frame holds.

    Args:
        y_true: true class indices into ``labels``.
        y_pred: predicted class indices into ``labels``, same length.
        labels: class names; their count fixes the matrix size.

    Returns:
        ``{"n", "top1", "macro_f1", "macro_f1_reference",
        "per_class": {label: {"precision", "recall", "f1", "support"}},
        "confusion": k x k nested list}``.

    Raises:
        ValueError: lengths differ or an index is outside ``[0, len(labels))``.
    """
    k = len(labels)
    true, pred = _indices(y_true, y_pred, k)
    matrix = confusion_matrix(y_true, y_pred, k)
    precision, recall, f1 = _per_class(true, pred, k)
    support = matrix.sum(axis=1)
    present = (support + matrix.sum(axis=0)) > 0
    return {
        "n": int(true.size),
        "top1": float(metrics.accuracy_score(true, pred)) if true.size else 0.0,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "macro_f1_reference": float(f1[support > 0].mean()) if (support > 0).any() else 0.0,
        "per_class": {
            label: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                    "support": int(support[i])}
            for i, label in enumerate(labels)
        },
        "confusion": matrix.tolist(),
    }


def roc_curve(scores: Sequence[float], positives: Sequence[bool]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of a score that should be high for positives.

    ``sklearn.metrics.roc_curve`` with ``drop_intermediate=False``: one point per distinct score
    (ties move together), including collinear points, starting at (0, 0) with threshold +inf.

    Args:
        scores: one score per example.
        positives: whether each example is a positive.

    Returns:
        (fpr, tpr, thresholds): predicting positive for ``score >= thresholds[i]`` gives
        false-positive rate ``fpr[i]`` and true-positive rate ``tpr[i]``.

    Raises:
        ValueError: lengths differ, or there are no positives or no negatives (scikit-learn
            would only warn and return NaN rates).
    """
    score = np.asarray(scores, np.float64).ravel()
    positive = np.asarray(positives, bool).ravel()
    if score.shape != positive.shape:
        raise ValueError(f"{score.size} scores but {positive.size} positives flags")
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == positive.size:
        raise ValueError("ROC needs both positives and negatives")
    fpr, tpr, thresholds = metrics.roc_curve(positive.astype(np.int64), score, pos_label=1,
                                             drop_intermediate=False)
    return fpr, tpr, thresholds


def auc(x: Sequence[float], y: Sequence[float]) -> float:
    """Area under a curve by the trapezoid rule (``sklearn.metrics.auc``).

    Args:
        x: non-decreasing abscissae, as ``roc_curve`` gives (scikit-learn would also take a
            decreasing ``x``; a reversed curve is a bug here).
        y: ordinates, one per ``x``.

    Raises:
        ValueError: lengths differ, fewer than 2 points, or ``x`` decreases somewhere.
    """
    xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if xs.shape != ys.shape or xs.size < 2:
        raise ValueError("auc needs two equally long arrays of at least 2 points")
    if np.any(np.diff(xs) < 0):
        raise ValueError("auc needs non-decreasing x")
    return float(metrics.auc(xs, ys))
