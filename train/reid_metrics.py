"""Re-identification retrieval metrics: leave-one-out rank-k and mAP over one gallery (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def retrieval_metrics(embeddings: np.ndarray, ids: Sequence, k: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Rank-k accuracy and mean average precision, each image queried against all the others.

    Similarity is cosine (rows are L2-normalised here, so unnormalised input is fine). Every image
    is a query once; its gallery is every other image. A query whose individual has no other
    image cannot be answered: it is skipped and counted in ``skipped``. Equal similarities keep
    gallery order (a stable sort), so ties are broken towards the earlier image.

    Args:
        embeddings: (N, D) one embedding per image.
        ids: N individual ids.
        k: the ranks to report as ``rank<k>``.

    Returns:
        ``{"rank1": .., "rank5": .., "mAP": .., "queries": n, "skipped": m}``; the scores are
        fractions in [0, 1], NaN when no query could be answered.

    Raises:
        ValueError: ``embeddings`` is not 2-D, or its length differs from ``ids``.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    ids = np.asarray(ids)
    if embeddings.ndim != 2 or len(embeddings) != len(ids):
        raise ValueError(f"need (N, D) embeddings for N ids, got {embeddings.shape} for {len(ids)} ids")
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    same = ids[:, None] == ids[None, :]
    np.fill_diagonal(same, False)
    answerable = same.any(axis=1)
    hits = {r: [] for r in k}
    precisions = []
    for query in np.flatnonzero(answerable):
        relevant = _ranked_relevance(unit, same, query)
        for r in k:
            hits[r].append(bool(relevant[:r].any()))
        precisions.append(_average_precision(relevant))
    result: dict[str, float] = {f"rank{r}": _mean(hits[r]) for r in k}
    result["mAP"] = _mean(precisions)
    result["queries"] = int(answerable.sum())
    result["skipped"] = int((~answerable).sum())
    return result


def _ranked_relevance(unit: np.ndarray, same: np.ndarray, query: int) -> np.ndarray:
    """Whether each gallery image (all but the query), most similar first, shows the query's individual."""
    gallery = np.delete(np.arange(len(unit)), query)
    similarity = unit[gallery] @ unit[query]
    order = np.argsort(-similarity, kind="stable")
    return same[query, gallery[order]]


def _average_precision(relevant: np.ndarray) -> float:
    positions = np.flatnonzero(relevant) + 1
    return float(np.mean(np.arange(1, len(positions) + 1) / positions))


def _mean(values: list) -> float:
    return float(np.mean(values)) if values else float("nan")
