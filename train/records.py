"""The one value dataset readers produce: one labelled image (or one box of it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path


@dataclass(frozen=True)
class Record:
    """One training example.

    Attributes:
        path: the image file.
        labels: its label(s) after reading (several when the source is multi-labelled; the
            labelmap and priority rules reduce them to one).
        bbox: normalised ``[x, y, w, h]`` of the object when the source has boxes, else None
            (one record per box: crops are cut later).
        individual: individual id for re-identification data.
        location: camera / station / deployment id, for leak-free splits.
        event: burst or capture-event id (sequence), for leak-free splits.
        time: capture time when known.
        source: which reader produced it (``folders``, ``csv``, ``coco``, ``megadetector``, ``voc``, ``camtrap_dp``).
        extra: anything else worth keeping (e.g. detector confidence).
    """

    path: Path
    labels: tuple[str, ...]
    bbox: tuple[float, float, float, float] | None = None
    individual: str | None = None
    location: str | None = None
    event: str | None = None
    time: datetime | None = None
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def label(self) -> str | None:
        """The single label, or None while the record is multi-labelled or unlabelled."""
        return self.labels[0] if len(self.labels) == 1 else None
