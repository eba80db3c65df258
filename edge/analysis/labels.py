"""Each box's one label, decided once: a pure combiner of the detector's class and the classifier.

Like SpeciesNet's prediction combiner, it runs once per frame and its result is the only label
anything downstream reads (events, alerts, privacy, thumbnails, rows, MQTT payloads, MegaDetector
output). The rules:

1. A detector class other than ``animal`` (``person``, ``vehicle``) is the label, scored by the
   detector: the species classifier only names animals, as with MegaDetector.
2. Otherwise the classifier's best class is the label, scored by its probability (a single-class
   detector's ``animal`` box can so become ``person`` when the classifier says so, rule 8).
3. Without a classifier the detector's class name is the label.
4. A frame without any box is classified whole (``Analyzer``): a confident class that is not
   empty (an animal, or a person or vehicle the detector missed) gives the frame one frame-sized box
   with that label and ``label_source`` ``whole_frame`` (SpeciesNet's whole-image backup); it is
   never embedded. No detector class is overruled there, so rule 8 does not apply: the best class is
   the label.
5. Frame context (SpeciesNet's ensemble of a whole-image classifier with the detector): with the
   whole frame's classification (``context``), an animal box's vote is the mean of its crop's and the
   frame's probabilities, ``label_source`` ``ensemble``; a crop the classifier itself calls a person
   or a vehicle stays so (privacy fails safe: the frame never talks a person into an animal).

6. Taxonomic roll-up (with a ``LabelSpace.rollup_min_score``): when the classifier's best animal
   class scores below it, the label rolls up the bundle's label hierarchy (``taxonomy``: label →
   ancestors, nearest first, carried in the manifest) to the most specific ancestor whose
   descendants' probabilities sum to it (``Bobcat`` 0.45 + ``Mountain lion`` 0.3 → ``felidae``
   0.75), else to ``animal`` when the animal classes together reach it; ``label_source`` ``rollup``.
7. A box the detector is sure of (``LabelSpace.sure_box``) is never labelled empty: when the
   classifier's label for it is an empty one, the label rolls up to ``animal`` (SpeciesNet's detector
   fallback); like any roll-up to ``animal`` it is blurred and never embedded.
8. The classifier turns the detector's ``animal`` box into a person or a vehicle only when its
   person and vehicle classes together hold at least ``LabelSpace.overrule_min_score`` of its
   probability (needs roll-up on); the label is then the best of them. Below, the box rolls up to
   ``animal`` (``label_source`` ``rollup``, that mass moved to ``animal``): blurred and never embedded
   like any roll-up to ``animal``, so privacy still fails safe. On animals of species it never learnt,
   a classifier's best guess is often ``Human`` at 0.2-0.5, and such boxes made whole frames "person";
   people themselves get their mass split between ``Human`` and ``Vehicle`` (together 0.95-0.97 on
   the MLWIC val people), hence the sum.

Each box also gets ``label_probs``, its vote over ``LabelSpace.labels`` (the classifier's
probabilities, or all on the detector's label; a rolled-up box moves its descendants' mass onto the
ancestor), whose best entry is always ``label``: events average these votes and decide by the same
roll-up, so a ``person`` box can never vote ``fox``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from common.labels import category_of
from edge.runtime.detections import Detections

ANIMAL = "animal"
WHOLE_FRAME = "whole_frame"
ROLLUP = "rollup"
ENSEMBLE = "ensemble"
SOURCES = ("detector", "classifier", ENSEMBLE, WHOLE_FRAME, ROLLUP)


@dataclass(frozen=True)
class LabelSpace:
    """Every label a box can end with: the classifier's labels, the ancestors its taxonomy rolls up to
    (and ``animal``, with a roll-up), then the detector's other classes.

    Attributes:
        detector, classifier: the models' labels.
        taxonomy: classifier label → its ancestors, nearest first (the manifest's ``taxonomy``).
        rollup_min_score: below this, a box's best animal class rolls up (None: never).
        sure_box: a detector box at least this confident is never labelled empty (rule 7; needs
            roll-up on, for the ``animal`` label; None: off).
        overrule_min_score: the classifier's probability its person and vehicle classes together need
            to relabel a detector ``animal`` box (rule 8; needs roll-up on; None: its best class always does).
    """

    detector: tuple[str, ...]
    classifier: tuple[str, ...]
    taxonomy: tuple[tuple[str, tuple[str, ...]], ...] = ()
    rollup_min_score: float | None = None
    sure_box: float | None = None
    overrule_min_score: float | None = None

    @classmethod
    def of(cls, detector: Sequence[str], classifier: Sequence[str], taxonomy: Mapping[str, Sequence[str]] | None = None,
           rollup_min_score: float | None = None, sure_box: float | None = None,
           overrule_min_score: float | None = None) -> LabelSpace:
        """A space from plain lists and a taxonomy dict (only the classifier's labels' entries kept)."""
        tree = tuple((label, tuple(up)) for label, up in (taxonomy or {}).items() if label in classifier)
        return cls(tuple(detector), tuple(classifier), tree, rollup_min_score, sure_box, overrule_min_score)

    @cached_property
    def ancestors(self) -> list[str]:
        """The taxonomy's ancestor names not already labels, most specific first (then ``animal``)."""
        names = dict.fromkeys(a for _, up in self.taxonomy for a in up if a not in self.classifier)
        rollup = [*names, ANIMAL] if self.rollup_min_score is not None else list(names)
        return list(dict.fromkeys(rollup))

    @cached_property
    def labels(self) -> list[str]:
        """The classifier's labels, the roll-up's ancestors, then the detector's classes not yet named
        (the detector's names alone without a classifier)."""
        if not self.classifier:
            return list(self.detector) or [ANIMAL]
        named = [*self.classifier, *(a for a in self.ancestors if a not in self.classifier)]
        return [*named, *(n for n in self.detector if n not in named and n != ANIMAL)]

    @cached_property
    def groups(self) -> list[tuple[str, frozenset[str]]]:
        """Each roll-up target with the labels it gathers (itself included), smallest group first."""
        lineage = dict(self.taxonomy)
        animals = [label for label in self.labels if names_animal(label, frozenset())]
        groups = {a: frozenset(label for label in animals if label == a or a in lineage.get(label, ()))
                  for a in dict.fromkeys(a for _, up in self.taxonomy for a in up)}
        ordered = sorted(groups.items(), key=lambda kv: len(kv[1]))
        return [*ordered, (ANIMAL, frozenset(animals))]

    def roll_up(self, probs: np.ndarray) -> tuple[str, float, np.ndarray] | None:
        """(label, score, vote) of a probability vector over ``labels`` whose best animal entry is below
        ``rollup_min_score``; None when that entry reaches it, nothing does, or roll-up is off."""
        if self.rollup_min_score is None or not len(probs):
            return None
        best = int(np.argmax(probs))
        if probs[best] >= self.rollup_min_score or not names_animal(self.labels[best], frozenset()):
            return None
        for target, members in self.groups:
            idx = [self.index(label) for label in members]
            total = float(probs[idx].sum())
            if len(members) > 1 and total >= self.rollup_min_score:
                vote = probs.copy()
                vote[idx] = 0.0
                vote[self.index(target)] = total
                return target, total, vote
        return None

    @cached_property
    def person_or_vehicle(self) -> np.ndarray:
        """Which classifier labels name a person or a vehicle (any spelling)."""
        return np.array([category_of(label) in ("person", "vehicle") for label in self.classifier], bool)

    def index(self, label: str) -> int:
        """Position of ``label`` in ``labels``."""
        return self.labels.index(label)

    def detector_name(self, class_id: int) -> str:
        """The detector's name of a class id (``animal`` for ids outside its labels)."""
        return self.detector[class_id] if 0 <= class_id < len(self.detector) else ANIMAL


def _decide(space: LabelSpace, class_id: int, confidence: float, probs: np.ndarray | None,
            context: np.ndarray | None = None) -> tuple[str, float, str, np.ndarray]:
    """(label, score, source, vote) of one box."""
    name = space.detector_name(class_id)
    vote = np.zeros(len(space.labels), np.float32)
    if name != ANIMAL or probs is None:
        vote[space.index(name)] = 1.0
        return name, float(confidence), "detector", vote
    source = "classifier"
    if context is not None and category_of(space.classifier[int(np.argmax(probs))]) not in ("person", "vehicle"):
        probs, source = (probs + context) / 2.0, ENSEMBLE
    vote[: len(probs)] = probs
    rolled = space.roll_up(vote)
    if rolled is not None:
        return rolled[0], rolled[1], ROLLUP, rolled[2]
    best = int(np.argmax(probs))
    category = category_of(space.classifier[best])
    moved = None  # which of the classifier's labels give their mass to "animal" (rules 7 and 8)
    unsure_person = (space.overrule_min_score is not None and category in ("person", "vehicle")
                     and float(probs[space.person_or_vehicle].sum()) < space.overrule_min_score)
    if ANIMAL in space.labels and space.sure_box is not None and confidence >= space.sure_box and category is None:
        moved = np.arange(len(probs)) == best  # the empty label's
    elif ANIMAL in space.labels and unsure_person:
        moved = space.person_or_vehicle  # every person and vehicle label's
    if moved is not None:
        vote[space.index(ANIMAL)] += vote[: len(probs)][moved].sum()
        vote[: len(probs)][moved] = 0.0
        return ANIMAL, float(confidence), ROLLUP, vote
    return space.classifier[best], float(probs[best]), source, vote


def names_animal(label: str, not_animal: set[str] | frozenset[str]) -> bool:
    """Whether a label names an animal: not one of ``not_animal`` (any case) and not a person, vehicle
    or empty label however a dataset spells it (``Human``, ``people``, ``Empty``, ``car``…)."""
    return label.casefold() not in {n.casefold() for n in not_animal} and category_of(label) == ANIMAL


def confident_animals(detections: Detections, not_animal: set[str] | frozenset[str], min_score: float) -> np.ndarray:
    """Which boxes are confidently an animal: a label that names an animal, scored at least
    ``min_score``, and not a roll-up all the way to ``animal`` (the classifier could not even name
    the order: its best class may have been a person). Privacy fails safe on the rest."""
    sources = detections.data.get("label_source", np.full(len(detections), "", dtype=object))
    named = np.array([names_animal(label, not_animal) and not (label == ANIMAL and source == ROLLUP)
                      for label, source in zip(detections.labels(), sources)], bool).reshape(-1)
    return named & (detections.data["label_score"] >= min_score)


def combine_labels(detections: Detections, space: LabelSpace, context: np.ndarray | None = None) -> Detections:
    """The detections with ``label``, ``label_score``, ``label_source`` and ``label_probs`` columns.

    Reads ``class_id``, ``confidence`` and, when the classifier ran, ``species_probs``; ``context`` is
    the whole frame's classifier probabilities (rule 5), None without.
    """
    probs = detections.data.get("species_probs")
    decided = [_decide(space, int(c), float(s), None if probs is None else probs[i], context)
               for i, (c, s) in enumerate(zip(detections.class_id, detections.confidence))]
    n = len(detections)
    return detections.with_data(
        label=np.array([d[0] for d in decided], dtype=object).reshape(n),
        label_score=np.array([d[1] for d in decided], np.float32).reshape(n),
        label_source=np.array([d[2] for d in decided], dtype=object).reshape(n),
        label_probs=np.array([d[3] for d in decided], np.float32).reshape(n, len(space.labels)),
    )


BLANK = "blank"


def frame_prediction(detections: Detections) -> tuple[str, float | None, str]:
    """The frame's one label (MegaDetector's image-level ``prediction``), from its boxes' labels.

    A person anywhere makes it ``person`` (its best box's label), then a vehicle, then the animal box
    the detector is surest of (a ``whole_frame`` box counts as one); no box: ``blank``.

    Returns:
        (label, score, source): the chosen box's ``label``, ``label_score`` and ``label_source``, or
        (``blank``, None, ``blank``).
    """
    labels = detections.labels()
    categories = [category_of(label) for label in labels]
    for wanted in ("person", "vehicle", ANIMAL):
        chosen = [i for i, c in enumerate(categories) if c == wanted]
        if chosen:
            i = max(chosen, key=lambda k: float(detections.confidence[k]))
            return labels[i], float(detections.data["label_score"][i]), str(detections.data["label_source"][i])
    return BLANK, None, BLANK
