"""Each box's one label, decided once: a pure combiner of the detector's class and the classifier.

Like SpeciesNet's prediction combiner, it runs once per frame and its result is the only label
anything downstream reads (events, alerts, privacy, thumbnails, rows, MQTT payloads, MegaDetector
output). The rules:

1. A detector class other than ``animal`` (``person``, ``vehicle``) is the label, scored by the
   detector: the species classifier only names animals, as with MegaDetector.
2. Otherwise the classifier's best class is the label, scored by its probability (a single-class
   detector's ``animal`` box can so become ``person`` when the classifier says so).
3. Without a classifier the detector's class name is the label.
4. A frame without any box is classified whole (``Analyzer``): a confident animal class gives the
   frame one frame-sized box with that label and ``label_source`` ``whole_frame`` (SpeciesNet's
   whole-image backup); it is never embedded.

Each box also gets ``label_probs``, its vote over ``LabelSpace.labels`` (the classifier's
probabilities, or all on the detector's label), whose best entry is always ``label``: events
average these votes, so a ``person`` box can never vote ``fox``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from common.labels import category_of
from edge.runtime.detections import Detections

ANIMAL = "animal"
WHOLE_FRAME = "whole_frame"
SOURCES = ("detector", "classifier", WHOLE_FRAME)


@dataclass(frozen=True)
class LabelSpace:
    """Every label a box can end with: the classifier's labels, then the detector's other classes."""

    detector: tuple[str, ...]
    classifier: tuple[str, ...]

    @cached_property
    def labels(self) -> list[str]:
        """The classifier's labels, then the detector's classes it lacks (its names alone without one)."""
        if not self.classifier:
            return list(self.detector) or [ANIMAL]
        return [*self.classifier, *(n for n in self.detector if n not in self.classifier and n != ANIMAL)]

    def index(self, label: str) -> int:
        """Position of ``label`` in ``labels``."""
        return self.labels.index(label)

    def detector_name(self, class_id: int) -> str:
        """The detector's name of a class id (``animal`` for ids outside its labels)."""
        return self.detector[class_id] if 0 <= class_id < len(self.detector) else ANIMAL


def _decide(space: LabelSpace, class_id: int, confidence: float,
            probs: np.ndarray | None) -> tuple[str, float, str, np.ndarray]:
    """(label, score, source, vote) of one box."""
    name = space.detector_name(class_id)
    vote = np.zeros(len(space.labels), np.float32)
    if name != ANIMAL or probs is None:
        vote[space.index(name)] = 1.0
        return name, float(confidence), "detector", vote
    vote[: len(probs)] = probs
    best = int(np.argmax(probs))
    return space.classifier[best], float(probs[best]), "classifier", vote


def names_animal(label: str, not_animal: set[str] | frozenset[str]) -> bool:
    """Whether a label names an animal: not one of ``not_animal`` (any case) and not a person, vehicle
    or empty label however a dataset spells it (``Human``, ``people``, ``Empty``, ``car``…)."""
    return label.casefold() not in {n.casefold() for n in not_animal} and category_of(label) == ANIMAL


def confident_animals(detections: Detections, not_animal: set[str] | frozenset[str], min_score: float) -> np.ndarray:
    """Which boxes are confidently an animal: a label that names an animal, scored at least
    ``min_score``. Privacy fails safe on the rest (a person may be behind them)."""
    named = np.array([names_animal(label, not_animal) for label in detections.labels()], bool).reshape(-1)
    return named & (detections.data["label_score"] >= min_score)


def combine_labels(detections: Detections, space: LabelSpace) -> Detections:
    """The detections with ``label``, ``label_score``, ``label_source`` and ``label_probs`` columns.

    Reads ``class_id``, ``confidence`` and, when the classifier ran, ``species_probs``.
    """
    probs = detections.data.get("species_probs")
    decided = [_decide(space, int(c), float(s), None if probs is None else probs[i])
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
