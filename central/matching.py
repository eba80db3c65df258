"""Top-k candidate individuals for an anchor image: cosine search, grouped by individual.

Pure core: ``rank_individuals`` turns nearest images into at most ``k`` individuals (best image
each), skipping the anchor's own individual and those already rejected for it (SpotID's skip).
``Matcher`` keeps one gallery per embedding space, a model and its dimension (vectors of different
models never meet; nor do a model's vectors of another dimension, so the first sender of a model
name cannot decide its dimension for everyone else).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from central.calibration import Calibration, calibrate
from central.gallery import Gallery, Hit, NumpyGallery
from central.graph import Individuals, build
from central.ingest import Sighting
from central.store import CentralStore

log = logging.getLogger("trapedge.central")


@dataclass(frozen=True)
class Candidate:
    """One proposed individual for an anchor: its best image and how likely it is the same animal."""

    individual: str
    image_id: str
    cosine: float
    confidence: float
    inliers: int | None = None


def rank_individuals(hits: list[Hit], find: Callable[[str], str], skip: set[str], k: int) -> list[tuple[str, Hit]]:
    """(individual, best hit) for the first ``k`` distinct individuals of ``hits`` not in ``skip``.

    Args:
        hits: nearest images, most similar first.
        find: image id -> individual id.
        skip: individuals never to propose (the anchor's own, those rejected for it).
        k: how many individuals.
    """
    best: dict[str, Hit] = {}
    for hit in hits:
        individual = find(hit.id)
        if individual in skip or individual in best:
            continue
        best[individual] = hit
        if len(best) == k:
            break
    return list(best.items())


def skipped(anchor_id: str, individuals: Individuals, rejected: set[str]) -> set[str]:
    """The individuals not to propose for ``anchor_id``: its own and every rejected one."""
    return {individuals.find(anchor_id)} | {individuals.find(image) for image in rejected}


GalleryFactory = Callable[[str, int], Gallery]


def numpy_gallery(model: str, dim: int) -> Gallery:
    """The default gallery factory: exact search in memory."""
    return NumpyGallery(dim)


class Matcher:
    """Proposes candidates for sightings against everything stored so far.

    Args:
        store: the central store (vectors are loaded from it once per embedding space).
        top_k: individuals proposed per anchor.
        min_pairs: verdicts of each kind needed to replace the default calibration.
        factory: makes the gallery of one model and dimension (numpy by default, pgvector optional).
        reranker: optional ``(anchor, [candidate sightings]) -> inlier counts`` re-ranking.
        rerank_depth: how many cosine candidates the re-ranker sees.
    """

    def __init__(self, store: CentralStore, top_k: int = 5, min_pairs: int = 5,
                 factory: GalleryFactory = numpy_gallery, reranker=None, rerank_depth: int = 10):
        self.store, self.top_k, self.min_pairs = store, top_k, min_pairs
        self.factory, self.reranker, self.rerank_depth = factory, reranker, rerank_depth
        self.galleries: dict[tuple[str, int], Gallery] = {}

    def gallery(self, model: str, dim: int) -> Gallery:
        """The gallery of one model and dimension, loaded from the store the first time.

        Stored vectors that are not finite, or all zeros, are quarantined rather than loaded.
        """
        if (model, dim) not in self.galleries:
            gallery = self.factory(model, dim)
            ids, vectors = self.store.vectors(model, dim)
            usable = np.isfinite(vectors).all(axis=1) & (np.nan_to_num(vectors) != 0).any(axis=1)
            if not usable.all():
                bad = [i for i, ok in zip(ids, usable) if not ok]
                self.store.quarantine(bad, "stored vector is not finite or all zeros")
                for sighting_id in bad:
                    log.warning("quarantined sighting %s: stored vector is not finite or all zeros (kept, not matched)",
                                sighting_id)
                ids, vectors = [i for i, ok in zip(ids, usable) if ok], vectors[usable]
            if ids:
                gallery.add(ids, vectors)
            self.galleries[(model, dim)] = gallery
        return self.galleries[(model, dim)]

    def build_galleries(self) -> list[str]:
        """Load the gallery of every stored embedding space; one line for each that could not be built.

        A gallery that fails (its database is down, say) is left out and tried again when next needed.
        """
        problems = []
        for model, dim in self.store.embedding_spaces():
            try:
                self.gallery(model, dim)
            except Exception as exc:  # one space's failure must not keep the others, or the service, down
                first_line = (str(exc).splitlines() or [""])[0][:200]
                problems.append(f"gallery of {model} ({dim} dimensions) not built: {type(exc).__name__}: {first_line}")
        return problems

    def add(self, sighting: Sighting) -> None:
        """Make a stored sighting searchable."""
        self.gallery(sighting.model, sighting.vector.size).add([sighting.id], sighting.vector[None])

    def state(self) -> tuple[Individuals, Calibration, dict[str, set[str]]]:
        """Individuals, calibration and per-anchor rejected images, from the current verdicts."""
        decisions = self.store.decisions()
        individuals, _ = build(decisions)
        rejected: dict[str, set[str]] = {}
        for d in decisions:
            if d.verdict == "no_match":
                rejected.setdefault(d.anchor_id, set()).add(d.candidate_id)
                rejected.setdefault(d.candidate_id, set()).add(d.anchor_id)
        return individuals, calibrate(decisions, self.min_pairs), rejected

    def propose(self, anchor: Sighting, rerank: bool | None = None) -> list[Candidate]:
        """The top-k candidate individuals for ``anchor`` under the current verdicts."""
        individuals, calibration, rejected = self.state()
        skip = skipped(anchor.id, individuals, rejected.get(anchor.id, set()))
        depth = self.rerank_depth if (self.reranker and rerank is not False) else self.top_k
        ranked = self._nearest_individuals(anchor, individuals.find, skip, max(depth, self.top_k))
        candidates = [Candidate(ind, hit.id, hit.cosine, float(calibration.probability(hit.cosine)))
                      for ind, hit in ranked]
        if self.reranker is not None and rerank is not False:
            candidates = self._rerank(anchor, candidates)
        return candidates[: self.top_k]

    def _nearest_individuals(self, anchor: Sighting, find, skip: set[str], k: int) -> list[tuple[str, Hit]]:
        gallery = self.gallery(anchor.model, anchor.vector.size)
        depth = 4 * k + 8
        while True:  # widen the search until k individuals are found or the gallery is exhausted
            hits = [h for h in gallery.search(anchor.vector, depth) if h.id != anchor.id]
            ranked = rank_individuals(hits, find, skip, k)
            if len(ranked) == k or depth >= len(gallery):
                return ranked
            depth *= 4

    def _rerank(self, anchor: Sighting, candidates: list[Candidate]) -> list[Candidate]:
        if anchor.crop_jpeg is None:
            return candidates
        images = [self.store.sighting(c.image_id) for c in candidates]
        inliers = self.reranker(anchor, images)
        from central.rerank import rerank_order

        return [Candidate(candidates[i].individual, candidates[i].image_id, candidates[i].cosine,
                          candidates[i].confidence, inliers[i]) for i in rerank_order(inliers)]

