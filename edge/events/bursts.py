"""Bursts of frames become events: a stable id, and a label aggregated over the burst.

Pure functions of detections and config. A burst votes with the boxes' final labels
(``label_probs`` and ``label``, decided once by ``edge.analysis.labels``), never with the raw
classifier output. Stills group by time (``gap_seconds``) and a burst begins with a frame that has a
confident box; a video clip is one event of its own, keyed by the clip: every sampled frame of it,
whatever the gaps between them, and even when none has a box (the camera was triggered).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.analysis.labels import LabelSpace
from edge.runtime.detections import Detections

_EVENT_NAMESPACE = uuid.UUID("5d1f5e2a-4c1b-4b8e-9a57-7f2c1a7e0b01")


@dataclass(frozen=True)
class Event:
    """One burst of frames from one source.

    Attributes:
        id: stable id (the same however often the event is updated or re-sent).
        source_id: the capture source.
        start, end: capture time of the first and last frame (camera time with its UTC offset).
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


class BurstConfig(BaseModel):
    """How frames group into events and how an event's label is decided."""

    model_config = ConfigDict(extra="forbid")
    gap_seconds: float = Field(10.0, gt=0, title="Frames of one source closer than this belong to one event")
    min_crop_confidence: float = Field(0.3, ge=0, le=1, title="Detector score a crop needs to vote on the label")
    top_k: int = Field(3, ge=1, title="Label probabilities kept per event")


@dataclass
class BurstState:
    """The running sums of one open event (what survives a restart, via the store)."""

    id: str
    source_id: str
    start: datetime
    end: datetime
    frames: int = 0
    crops: int = 0
    probs_sum: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    clip: bool = False  # a video clip's event: only its own frames join (not kept across a restart)


def event_id(device_id: str, source_id: str, first_frame_key: str) -> str:
    """Stable id of the event that starts with a given frame, or of a video clip's event given the clip's
    key (same after any restart)."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, f"{device_id}/{source_id}/{first_frame_key}"))


def voters(detections: Detections, config: BurstConfig) -> Detections:
    """The boxes confident enough to vote on the event's label."""
    return detections[detections.confidence >= config.min_crop_confidence]


def add_frame(state: BurstState, time: datetime, votes: Detections, labels: list[str]) -> BurstState:
    """The burst with one more frame (pure).

    Args:
        state: the burst so far.
        time: the frame's capture time.
        votes: the frame's voting boxes (``voters``), with ``label`` and ``label_probs`` columns.
        labels: the names of the ``label_probs`` columns.

    Returns:
        The burst with the votes summed per label and, per final label, the largest number of
        voting boxes seen in one frame.
    """
    sums, counts = dict(state.probs_sum), dict(state.counts)
    if len(votes):
        for label, total in zip(labels, votes.data["label_probs"].sum(axis=0)):
            if total:
                sums[label] = sums.get(label, 0.0) + float(total)
        for label, n in Counter(votes.labels()).items():
            counts[label] = max(counts.get(label, 0), n)
    return BurstState(state.id, state.source_id, min(state.start, time), max(state.end, time),
                      state.frames + 1, state.crops + len(votes), sums, counts, state.clip)


def aggregate_burst(state: BurstState, config: BurstConfig, closed: bool = False,
                    space: LabelSpace | None = None) -> Event:
    """The event as it stands: mean class probabilities over the burst's confident crops, the best
    one its label, rolled up by ``space``'s taxonomy as a box's label would be."""
    if state.crops == 0:
        return Event(state.id, state.source_id, state.start, state.end, state.frames, None, 0.0, {}, {}, closed)
    means = sorted(((label, total / state.crops) for label, total in state.probs_sum.items()), key=lambda kv: -kv[1])
    label, score = means[0]
    if space is not None:
        vector = np.array([state.probs_sum.get(name, 0.0) / state.crops for name in space.labels], np.float32)
        rolled = space.roll_up(vector)
        if rolled is not None:
            label, score = rolled[0], rolled[1]
    probs = {lbl: round(p, 4) for lbl, p in means[: config.top_k]}
    return Event(state.id, state.source_id, state.start, state.end, state.frames, label, round(score, 4),
                 probs, dict(state.counts), closed)


def joins(state: BurstState | None, time: datetime, config: BurstConfig, clip_event: str | None = None) -> bool:
    """Whether a frame taken at ``time`` belongs to the open burst ``state``.

    Args:
        clip_event: for a frame of a video clip, the id of its clip's event (``event_id`` of the clip's
            key): it joins that event whatever the gap, and no other; a still (None) never joins a clip's
            event, only a burst of stills within ``gap_seconds``.
    """
    if state is None:
        return False
    if clip_event is not None:
        return state.id == clip_event
    return not state.clip and abs((time - state.end).total_seconds()) <= config.gap_seconds
