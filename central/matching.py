"""Top-k candidate individuals for an anchor image, each with its P(same individual), and P(new individual).

``Matcher`` keeps one gallery per embedding space, a model and its dimension (vectors of different
models never meet; nor do a model's vectors of another dimension, so the first sender of a model
name cannot decide its dimension for everyone else). For an anchor it searches the gallery by
cosine, drops the anchor's own individual, those already rejected for it (SpotID's skip) and
images of the other known flank (``central.sides``), then hands the nearest images to
``central.fusion.fuse``: local matching of the shortlist within the time budget, fused and
calibrated P(same), candidates ordered by it, P(new individual) and the open-set policy.
``rank_individuals`` is the plain cosine grouping (best image per individual).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from central.calibration import calibrate
from central.evidence_store import EvidenceStore
from central.fusion import NEW_BELOW, SHORTLIST, FusionModel, fuse, propose_new
from central.gallery import INDEXED_DEPTH, Gallery, Hit, NumpyGallery
from central.graph import Individuals, build
from central.ingest import Sighting
from central.local_features import inliers
from central.sides import comparable, side_of
from central.store import CentralStore

log = logging.getLogger("trapedge.central")


@dataclass(frozen=True)
class Candidate:
    """One proposed individual for an anchor: its best image and P(same individual) (``confidence``).

    ``inliers`` is None when the best image was not matched locally (no crop, beyond the shortlist,
    or the time budget was spent).
    """

    individual: str
    image_id: str
    cosine: float
    confidence: float
    inliers: int | None = None


@dataclass(frozen=True)
class Proposal:
    """The candidates of one anchor (by descending confidence) and what the open-set policy says.

    Attributes:
        candidates: at most ``top_k`` individuals.
        p_new: probability that the anchor shows an individual not in the gallery.
        new_individual: the policy proposes 'new individual' (no candidate reaches ``new_individual_below``).
        shortlisted: images considered for local matching; matched: images matched locally.
        budget_exceeded: local matching stopped at the time budget; seconds: time spent fusing.
        calibration: "prior" or "fitted on P confirmed / N rejected pairs".
    """

    candidates: list[Candidate]
    p_new: float
    new_individual: bool
    shortlisted: int
    matched: int
    budget_exceeded: bool
    seconds: float
    calibration: str


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
        min_pairs: verdicts of each kind needed to refit the fusion curves.
        factory: makes the gallery of one model and dimension (numpy by default, pgvector optional).
        local_matching: match local features of the shortlist (needs crops).
        shortlist: gallery images matched locally per anchor.
        time_budget_s: seconds of local matching per anchor (the rest is scored by cosine alone).
        new_individual_below: the open-set policy's threshold on the best candidate's P(same).
        separate_sides: never compare images of two different known flanks.
    """

    def __init__(self, store: CentralStore, top_k: int = 5, min_pairs: int = 5,
                 factory: GalleryFactory = numpy_gallery, local_matching: bool = True, shortlist: int = SHORTLIST,
                 time_budget_s: float = 1.0, new_individual_below: float = NEW_BELOW, separate_sides: bool = True):
        self.store, self.top_k, self.min_pairs, self.factory = store, top_k, min_pairs, factory
        self.local_matching, self.shortlist, self.time_budget_s = local_matching, shortlist, time_budget_s
        self.new_individual_below, self.separate_sides = new_individual_below, separate_sides
        self.galleries: dict[tuple[str, int], Gallery] = {}
        self.evidence = EvidenceStore(store)
        self._sides: dict[str, str | None] = {}

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
        if self.local_matching and sighting.crop_jpeg is not None:
            self.evidence.prefetch(sighting.id)

    def state(self) -> tuple[Individuals, FusionModel, dict[str, set[str]]]:
        """Individuals, fusion curves and per-anchor rejected images, from the current verdicts."""
        decisions = self.store.decisions()
        individuals, _ = build(decisions)
        rejected: dict[str, set[str]] = {}
        for d in decisions:
            if d.verdict == "no_match":
                rejected.setdefault(d.anchor_id, set()).add(d.candidate_id)
                rejected.setdefault(d.candidate_id, set()).add(d.anchor_id)
        return individuals, calibrate(self.evidence.verdict_evidence(), self.min_pairs), rejected

    def propose(self, anchor: Sighting, rerank: bool | None = None) -> list[Candidate]:
        """The top-k candidate individuals for ``anchor``, by descending P(same) (``rerank=False``: no local matching)."""
        return self.proposal(anchor, rerank).candidates

    def proposal(self, anchor: Sighting, local: bool | None = None) -> Proposal:
        """Candidates, P(new individual) and the open-set policy's answer for ``anchor``."""
        individuals, model, rejected = self.state()
        skip = skipped(anchor.id, individuals, rejected.get(anchor.id, set()))
        hits = self._comparable_hits(anchor, individuals.find, skip)
        matching = self.local_matching if local is None else local
        matcher = self._local(anchor) if matching and anchor.crop_jpeg is not None else None
        fused = fuse(hits, individuals.find, model, matcher, self.shortlist, self.time_budget_s, self.top_k)
        if fused.budget_exceeded:
            log.info("anchor %s: local matching stopped at the %.2f s budget after %d of %d images",
                     anchor.id, self.time_budget_s, fused.matched, fused.shortlisted)
        candidates = [Candidate(s.individual, s.best.image_id, s.best.cosine, s.probability, s.best.inliers)
                      for s in fused.individuals[: self.top_k]]
        self.evidence.record(anchor.id, [s.best for s in fused.individuals[: self.top_k]])
        return Proposal(candidates, fused.p_new, propose_new(fused, self.new_individual_below), fused.shortlisted,
                        fused.matched, fused.budget_exceeded, fused.seconds, _described(model))

    def _comparable_hits(self, anchor: Sighting, find, skip: set[str]) -> list[Hit]:
        """Nearest comparable images, enough for the shortlist and ``top_k`` individuals (or all there are)."""
        gallery = self.gallery(anchor.model, anchor.vector.size)
        mine = side_of(anchor.meta, anchor.name) if self.separate_sides else None
        # twice the shortlist leaves room for the images skipped below, but no deeper than an index answers from
        # itself: with pgvector a first search of 1,200 would scan every vector (the loop widens only if needed)
        depth = max(4 * self.top_k + 8, min(2 * self.shortlist, INDEXED_DEPTH))
        while True:  # widen the search until enough are found or the gallery is exhausted
            hits = [h for h in gallery.search(anchor.vector, depth) if h.id != anchor.id and find(h.id) not in skip
                    and comparable(mine, self._side(h.id))]
            if (len(hits) >= self.shortlist and len({find(h.id) for h in hits}) >= self.top_k) or depth >= len(gallery):
                return hits
            depth *= 4

    def _side(self, sighting_id: str) -> str | None:
        if sighting_id not in self._sides:
            sighting = self.store.sighting(sighting_id)
            self._sides[sighting_id] = None if sighting is None else side_of(sighting.meta, sighting.name)
        return self._sides[sighting_id]

    def _local(self, anchor: Sighting) -> Callable[[str], int | None]:
        mine = self.evidence.features(anchor.id, anchor.crop_jpeg)

        def count(image_id: str) -> int | None:
            theirs = self.evidence.features(image_id)
            return None if mine is None or theirs is None else inliers(mine, theirs)

        return count


def _described(model: FusionModel) -> str:
    if not model.fitted:
        return "prior"
    return f"fitted on {model.positives} confirmed / {model.negatives} rejected pairs"
