"""Fusing the global embedding with local keypoint matching into P(same individual), and P(new individual).

The pure core of matching (after WildFusion, Cermak et al. 2024: a calibrated fusion of a global
embedding with local matchers). For one anchor:

1. *shortlist*: the ``shortlist`` nearest comparable gallery images by cosine (comparable: not of the
   anchor's own or a rejected individual, and not of the other known flank, see ``sides``);
2. *local matching* of the anchor with each shortlisted image in cosine order (RootSIFT + RANSAC
   inliers, ``central.local_features``) until ``budget_s`` is spent; the images left are scored
   without it and the proposal says so;
3. *fusion*: ``P(same) = sigmoid(w_z * z + w_i * log(1 + inliers) + b)`` for matched pairs and
   ``sigmoid(v_z * z + c)`` for pairs without local evidence, where ``z`` is the pair's cosine
   standardised over the anchor's shortlist (mean and standard deviation of its cosines). The
   standardisation makes the curve carry over between embedders whose cosines live on different
   scales (the default embedder's pairs all sit between 0.7 and 0.95);
4. *individuals*: an individual's probability is the noisy-OR of its best ``IMAGES_PER_INDIVIDUAL``
   images' probabilities; candidates are ordered by it, so percentages and ranks always agree;
5. *open set*: the anchor is a new individual with ``P(new) = 1 / (1 + sum of the odds of every
   individual scored)`` (mutually exclusive hypotheses whose pairwise probabilities were calibrated
   on shortlist pairs); the policy proposes 'new individual' when the best candidate's P(same) is
   below ``new_individual_below``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from central.gallery import Hit

IMAGES_PER_INDIVIDUAL = 3
MIN_SPREAD = 0.02  # floor of the shortlist's cosine standard deviation (a shortlist of near-identical images)


@dataclass(frozen=True)
class FusionModel:
    """Logistic weights of the fused and the cosine-only curve, and the verdicts they came from.

    ``fused`` is (w_z, w_inliers, bias) and ``cosine_only`` is (v_z, bias).
    """

    fused: tuple[float, float, float]
    cosine_only: tuple[float, float]
    positives: int = 0
    negatives: int = 0

    @property
    def fitted(self) -> bool:
        return self.positives > 0

    def probability(self, z: np.ndarray | float, inliers: np.ndarray | float | None = None) -> np.ndarray | float:
        """P(same) for standardised cosines ``z`` with inlier counts (None: no local evidence)."""
        z = np.asarray(z, np.float64)
        if inliers is None:
            logit = self.cosine_only[0] * z + self.cosine_only[1]
        else:
            logit = self.fused[0] * z + self.fused[1] * np.log1p(np.asarray(inliers, np.float64)) + self.fused[2]
        p = 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50)))
        return float(p) if np.ndim(p) == 0 else p


# Prior before any verdicts. `python -m central.evaluate --fit-prior ../shared/data/reid/lion/train` (bundles/default,
# an embedder never trained on lions; 594 images, 59,400 shortlist pairs of which 841 same) fits
# fused (-0.129, 0.675, -4.522) and cosine-only (-0.017, -4.243): on those lion crops (different body parts of
# different photos) the default embedder's cosine carries no signal, so the fit gives it no weight. The cosine-only
# curve keeps a moderate weight (0.9 per standard deviation of the shortlist): with the fitted one the SpotID
# leopards' rank-1 by cosine alone drops from 0.91 to 0.18. The fused curve, once local evidence is there, gives the
# cosine only 0.1 (it still orders images of equal inliers), as the fit says for an embedder that never saw the
# species, which is what a new species meets; the inlier weight and bias are of the same order as the fit (P(same) =
# 0.5 at about 100 inliers). Chosen on lion train (central evaluate, leave-one-out, shortlist 300): rank-1 0.189 with
# the cosine weight 0.8 it had, 0.263 at 0.3, 0.291 at 0.1, 0.308 at 0. Verdicts refit both curves
# (central.calibration), so an embedder whose cosine does tell individuals apart regains its weight.
PRIOR = FusionModel(fused=(0.1, 1.3, -6.0), cosine_only=(0.9, -4.0))
# Gallery images matched locally per anchor. With a cosine that tells little (an embedder that never saw the
# species), the same individual's images sit anywhere in the gallery: on lion train (594 crops, fused cosine weight 0)
# rank-1 was 0.205 with 100 of them matched, 0.308 with 300, 0.350 with all (300 keypoints a crop). With 450 keypoints
# and the ratio test as one matrix product (``local_features``), lion train with the default bundle gives rank-1 /
# top-5 / mAP 0.335 / 0.429 / 0.106 with 300 and 0.404 / 0.497 / 0.130 with 600 (every image), at ~0.7 ms a match:
# 600 matches take ~0.42 s here, within the 1 s budget, which stops a slower machine earlier.
SHORTLIST = 600
# The open-set policy: 'new individual' when no candidate's P(same) reaches this. Chosen on lion train with this prior
# (`central evaluate ../shared/data/reid/lion/train --sweep-new`, the best fused F1 of 'new individual': 0.696 at 0.10,
# precision / recall 0.56 / 0.92; 0.67 at 0.5, where nearly every anchor is called new). Checked again with 450
# keypoints and the shortlist of 600: still best at 0.10 (F1 0.710, precision / recall 0.58 / 0.92).
NEW_BELOW = 0.1


@dataclass(frozen=True)
class Evidence:
    """One shortlisted or further gallery image: its cosine, standardised cosine, inliers, probability."""

    image_id: str
    individual: str
    cosine: float
    z: float
    inliers: int | None
    probability: float


@dataclass(frozen=True)
class Scored:
    """One candidate individual: its best image and the noisy-OR probability of its best images."""

    individual: str
    best: Evidence
    probability: float


@dataclass(frozen=True)
class Fused:
    """Everything one anchor's proposal found (``individuals`` best first)."""

    individuals: list[Scored]
    evidence: list[Evidence]
    p_new: float
    shortlisted: int
    matched: int
    budget_exceeded: bool
    seconds: float


def standardise(cosines: np.ndarray) -> tuple[float, float]:
    """Mean and (floored) standard deviation of the shortlist's cosines."""
    if len(cosines) == 0:
        return 0.0, 1.0
    return float(np.mean(cosines)), max(float(np.std(cosines)), MIN_SPREAD)


def noisy_or(probabilities: list[float]) -> float:
    """P(at least one of the best ``IMAGES_PER_INDIVIDUAL`` images shows the anchor's individual)."""
    best = sorted(probabilities, reverse=True)[:IMAGES_PER_INDIVIDUAL]
    return 1.0 - math.prod(1.0 - p for p in best)


def fuse(hits: list[Hit], find: Callable[[str], str], model: FusionModel,
         local: Callable[[str], int | None] | None, shortlist: int = SHORTLIST, budget_s: float = 1.0, top_k: int = 5,
         clock: Callable[[], float] = time.perf_counter) -> Fused:
    """Score comparable gallery images and their individuals for one anchor.

    Args:
        hits: comparable gallery images (already without the anchor, skipped individuals and the other
            flank), most similar first.
        find: image id -> individual.
        model: the fusion curves.
        local: image id -> inliers with the anchor (None where either crop is missing); None: no
            local matching.
        shortlist: images matched locally at most (and over which cosines are standardised).
        budget_s: seconds local matching may take; the rest of the shortlist is scored without it.
        top_k: images beyond the shortlist are scored (by cosine alone) only until ``top_k`` individuals are found.
        clock: monotonic seconds (tests give a fake one).
    """
    start = clock()
    hits = _enough(hits, find, shortlist, top_k)
    head = hits[:shortlist]
    mean, spread = standardise(np.array([h.cosine for h in head]))
    inliers: list[int | None] = [None] * len(hits)
    matched, exceeded = 0, False
    if local is not None:
        for i, hit in enumerate(head):
            if clock() - start > budget_s:
                exceeded = True
                break
            inliers[i] = local(hit.id)
            matched += inliers[i] is not None
    evidence = [Evidence(h.id, find(h.id), h.cosine, (h.cosine - mean) / spread, n,
                         float(model.probability((h.cosine - mean) / spread, n)))
                for h, n in zip(hits, inliers)]
    individuals = individuals_of(evidence)
    odds = sum(s.probability / max(1.0 - s.probability, 1e-12) for s in individuals)
    return Fused(individuals, evidence, 1.0 / (1.0 + odds), len(head), matched, exceeded, clock() - start)


def _enough(hits: list[Hit], find: Callable[[str], str], shortlist: int, top_k: int) -> list[Hit]:
    """The shortlist, then further hits only until it holds ``top_k`` individuals."""
    seen = {find(h.id) for h in hits[:shortlist]}
    end = shortlist
    while len(seen) < top_k and end < len(hits):
        seen.add(find(hits[end].id))
        end += 1
    return hits[:end]


def individuals_of(evidence: list[Evidence]) -> list[Scored]:
    """Individuals by descending noisy-OR probability (ties: the higher best cosine first)."""
    grouped: dict[str, list[Evidence]] = {}
    for e in evidence:
        grouped.setdefault(e.individual, []).append(e)
    scored = [Scored(ind, max(group, key=lambda e: (e.probability, e.cosine)), noisy_or([e.probability for e in group]))
              for ind, group in grouped.items()]
    return sorted(scored, key=lambda s: (-s.probability, -s.best.cosine))


def propose_new(fused: Fused, new_individual_below: float) -> bool:
    """The open-set policy: 'new individual' when no candidate reaches ``new_individual_below``."""
    return not fused.individuals or fused.individuals[0].probability < new_individual_below
