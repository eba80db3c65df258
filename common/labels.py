"""What a label names, in every part of the system: an animal, a person, a vehicle, or nothing.

Datasets and trained classifiers spell these their own way (``Human``, ``people``, ``Empty``,
``blank``); one function reads them all, so the edge's privacy rules, the evaluation and the
training data agree on what is a person.
"""

from __future__ import annotations

# dataset labels that name no species: what a detector class or an image-level class is made of
PERSON_LABELS = frozenset({"person", "people", "human", "humans"})
VEHICLE_LABELS = frozenset({"vehicle", "vehicles", "car", "truck"})
EMPTY_LABELS = frozenset({"empty", "blank"})


def category_of(label: str) -> str | None:
    """``person``, ``vehicle`` or ``animal`` for a dataset or model label; None for an empty one."""
    name = label.casefold()
    if name in EMPTY_LABELS:
        return None
    return "person" if name in PERSON_LABELS else "vehicle" if name in VEHICLE_LABELS else "animal"
