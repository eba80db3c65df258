"""The vector search seam: a ``Gallery`` holds one model's L2-normalised vectors by sighting id.

``NumpyGallery`` is exact (one matrix product) and the default; ``central.gallery_pgvector``
puts the same interface on PostgreSQL + pgvector for deployments that outgrow one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

# The deepest search an approximate index answers from the index: pgvector's HNSW returns at most
# ``hnsw.ef_search`` rows and caps that at 1000, so a deeper search scans every vector exactly.
INDEXED_DEPTH = 1000


@dataclass(frozen=True)
class Hit:
    """One gallery image near a query, by cosine similarity."""

    id: str
    cosine: float


class Gallery(Protocol):
    """What matching needs from a vector store."""

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        """Add (N, D) L2-normalised vectors; an id already present is ignored."""

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        """The ``k`` nearest vectors to an L2-normalised query, most similar first."""

    def __len__(self) -> int: ...


class NumpyGallery:
    """Exact cosine search over an in-memory float32 matrix that grows by doubling."""

    INITIAL_ROWS = 64  # small: an empty gallery costs 64 x dim x 4 bytes

    def __init__(self, dim: int):
        self.dim = int(dim)
        self._matrix = np.zeros((self.INITIAL_ROWS, self.dim), np.float32)
        self._ids: list[str] = []
        self._known: set[str] = set()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32).reshape(-1, self.dim)
        first = {sid: i for i, sid in reversed(list(enumerate(ids)))}  # the first of repeated ids
        keep = [i for i, sid in enumerate(ids) if sid not in self._known and first[sid] == i]
        if len(keep) != len(ids):
            ids, vectors = [ids[i] for i in keep], vectors[keep]
        n = len(self._ids)
        while n + len(ids) > len(self._matrix):
            self._matrix = np.concatenate([self._matrix, np.zeros_like(self._matrix)])
        self._matrix[n : n + len(ids)] = vectors
        self._ids.extend(ids)
        self._known.update(ids)

    def search(self, query: np.ndarray, k: int) -> list[Hit]:
        n = len(self._ids)
        if n == 0 or k <= 0:
            return []
        scores = self._matrix[:n] @ np.asarray(query, np.float32).reshape(self.dim)
        k = min(k, n)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        return [Hit(self._ids[i], float(scores[i])) for i in top]
