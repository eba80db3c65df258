"""Bursts of frames become events: a stable id, and a label aggregated over the burst."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Event:
    """One burst of frames from one source.

    Attributes:
        id: stable id (the same however often the event is updated or re-sent).
        source_id: the capture source.
        start, end: capture time of the first and last frame (naive camera time).
        frames: number of frames in the burst.
        label: aggregated species label, None when nothing confident was seen.
        score: aggregated probability of ``label``.
        probs: top aggregated label probabilities, best first.
        counts: per label, the largest number of confident crops seen in one frame.
        closed: no frame can join any more (the burst gap has passed).
    """

    id: str
    source_id: str
    start: datetime
    end: datetime
    frames: int
    label: str | None
    score: float
    probs: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    closed: bool = False
