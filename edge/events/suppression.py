"""Repeated static false positives: a place of a fixed camera's frame that keeps being called an animal.

A branch, a rock or a glint that the detector boxes in every event of a fixed camera is the commonest
false alert. Per source, every candidate box (``candidates``) joins the cluster whose representative
box it overlaps most (IoU at least ``iou``, whatever its label: day and night, the classifier may
name the same rock differently), or starts a new one. A cluster counts the distinct events it was
seen in: a sighting more than the burst gap after the cluster's last one begins a new event, so a
burst of a resting animal, however long, is one event. A cluster seen in ``min_events`` events that
span ``min_span_hours`` becomes ``suppressed``: from then on its boxes (this frame's included) are
still stored, marked with its id, but vote for no event and raise no alert.

Releasing a cluster (``release``) clears its evidence: it is suppressed again only after
``min_events`` new events spanning ``min_span_hours`` after the release. A cluster not seen for
``window_days`` is forgotten (the sliding window), and a source keeps at most ``max_clusters``, the
stalest candidates going first. A box larger than ``max_box_area`` of the frame is never a candidate:
animals entering at the same edge of a trail every day make large boxes that recur as well as any
rock does (MegaDetector's offline repeat-detection elimination ignores boxes over 0.2 of the image
for the same reason, with a person reviewing the rest; live, with nobody reviewing, 0.1). Pure
functions of boxes, times and config.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from common.labels import category_of
from edge.analysis.labels import WHOLE_FRAME
from edge.runtime.detections import Detections

State = Literal["candidate", "suppressed", "released"]
STATES: tuple[State, ...] = ("candidate", "suppressed", "released")
_CLUSTER_NAMESPACE = uuid.UUID("6a0c2f1e-8d3b-4f7a-9c51-2e4b7d9f0a13")
_FOLLOW = 10  # a cluster's box is the mean of its last ~10 matches, so it follows a slow drift (growing grass)


class SuppressionConfig(BaseModel):
    """When a box that recurs at one place stops raising events and alerts."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, title="Suppress boxes at places seen in many events over hours (still stored, "
                                      "marked with the cluster id)")
    iou: float = Field(0.7, ge=0.3, le=0.95, title="IoU with a cluster's box for a box to be that place")
    max_box_area: float = Field(0.1, gt=0, le=1, title="Largest box, as a share of the frame, that may be suppressed "
                                                       "(a close animal fills the frame; a branch or a rock does not)")
    min_events: int = Field(5, ge=2, le=1000, title="Distinct events a place must be seen in before it is suppressed")
    min_span_hours: float = Field(2.0, ge=0.25, le=24 * 90,
                                  title="Hours from the first to the last of those events (a resting animal's "
                                        "events do not spread over hours)")
    window_days: float = Field(14.0, ge=1, le=365, title="A place not seen for this many days is forgotten")
    max_clusters: int = Field(200, ge=10, le=2000, title="Places remembered per source (the stalest go first)")

    @model_validator(mode="after")
    def _window_holds_the_span(self) -> SuppressionConfig:
        if self.window_days * 24 <= self.min_span_hours:
            raise ValueError(f"window_days ({self.window_days}) must be longer than min_span_hours "
                             f"({self.min_span_hours} h): a place would be forgotten before it could be suppressed")
        return self


@dataclass(frozen=True)
class Cluster:
    """One place of one source's frame where boxes recur.

    Attributes:
        id: short stable id (``trapedge suppress release ID``).
        source_id: the capture source.
        box: representative box, normalised ``(x1, y1, x2, y2)`` in [0, 1].
        hits: frames it was matched in.
        events: distinct events it was seen in (since it appeared, or since its release).
        first_seen: camera time of the first of those events.
        last_seen: camera time it was last matched.
        day_events, night_events: ``events`` split by the frame's day/night statistic.
        state: ``candidate``, ``suppressed`` or ``released``.
        since: camera time it became suppressed (None unless suppressed).
    """

    id: str
    source_id: str
    box: tuple[float, float, float, float]
    hits: int
    events: int
    first_seen: datetime
    last_seen: datetime
    day_events: int = 0
    night_events: int = 0
    state: State = "candidate"
    since: datetime | None = None

    def __post_init__(self) -> None:
        x1, y1, x2, y2 = self.box
        if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
            raise ValueError(f"cluster box must be normalised x1 < x2, y1 < y2 in [0, 1], got {list(self.box)}")
        if self.state not in STATES:
            raise ValueError(f"cluster state must be one of {STATES}, got {self.state!r}")
        if self.events != self.day_events + self.night_events or min(self.hits, self.events) < 0:
            raise ValueError(f"cluster {self.id}: events {self.events} != day {self.day_events} + night "
                             f"{self.night_events}, or a negative count")

    @property
    def suppressed(self) -> bool:
        return self.state == "suppressed"


@dataclass(frozen=True)
class Observation:
    """What one frame did to its source's clusters.

    Attributes:
        clusters: the source's clusters after the frame.
        suppressed_by: per box of the frame, the id of the suppressed cluster it belongs to, else None.
        changed: clusters created or updated by the frame (to save).
        removed: ids of clusters forgotten (not seen for ``window_days``) or evicted (over ``max_clusters``).
    """

    clusters: tuple[Cluster, ...]
    suppressed_by: tuple[str | None, ...]
    changed: tuple[Cluster, ...]
    removed: tuple[str, ...]


def candidates(detections: Detections) -> np.ndarray:
    """Which boxes may be a static false positive: any box the detector placed, whatever its label,
    except a person or vehicle (never suppressed) and the classifier's frame-sized ``whole_frame`` box
    (it is not a place in the frame)."""
    sources = detections.data.get("label_source", np.full(len(detections), "", dtype=object))
    return np.array([category_of(label) not in ("person", "vehicle") and source != WHOLE_FRAME
                     for label, source in zip(detections.labels(), sources)], bool).reshape(-1)


def iou(box: Sequence[float] | np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one ``(x1, y1, x2, y2)`` box with each row of ``others`` (N, 4)."""
    others = np.asarray(others, np.float64).reshape(-1, 4)
    x1, y1 = np.maximum(box[0], others[:, 0]), np.maximum(box[1], others[:, 1])
    x2, y2 = np.minimum(box[2], others[:, 2]), np.minimum(box[3], others[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    union = area + (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def cluster_id(source_id: str, box: Sequence[float], time: datetime) -> str:
    """The id of the cluster a box starts (12 hex digits, the same if the frame is recorded again)."""
    key = f"{source_id}/{time.isoformat()}/{','.join(f'{v:.4f}' for v in box)}"
    return uuid.uuid5(_CLUSTER_NAMESPACE, key).hex[:12]


def release(cluster: Cluster) -> Cluster:
    """The cluster released by a person: not suppressed, its evidence cleared (it must be seen in
    ``min_events`` new events spanning ``min_span_hours`` to be suppressed again)."""
    return replace(cluster, events=0, day_events=0, night_events=0, first_seen=cluster.last_seen,
                   state="released", since=None)


def observe(clusters: Sequence[Cluster], source_id: str, boxes: np.ndarray, eligible: np.ndarray, time: datetime,
            night: bool, event_gap_s: float, config: SuppressionConfig) -> Observation:
    """One frame of ``source_id`` against its clusters (pure).

    Args:
        clusters: the source's clusters before the frame.
        boxes: the frame's boxes, normalised ``(x1, y1, x2, y2)``, shape (N, 4).
        eligible: which boxes may be suppressed (``candidates``); the others, and boxes larger than
            ``max_box_area``, neither match nor count.
        time: the frame's capture time.
        night: the frame is a night (infrared) one.
        event_gap_s: the burst gap: a sighting further than this from a cluster's last one is a new event.
        config: thresholds.

    Returns:
        The clusters after the frame and, per box, the suppressed cluster it belongs to.
    """
    boxes = np.clip(np.asarray(boxes, np.float64).reshape(-1, 4), 0.0, 1.0)
    current = {c.id: c for c in clusters}
    matched: dict[str, list[np.ndarray]] = {}
    box_cluster: list[str | None] = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    usable = np.asarray(eligible, bool).reshape(-1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    for box, ok in zip(boxes, usable & (areas <= config.max_box_area)):
        cid = _match(box, list(current.values()), config.iou) if ok else None
        if ok and cid is None:
            new = _start(source_id, box, time)
            current[new.id], cid = new, new.id
        if cid is not None:
            matched.setdefault(cid, []).append(box)
        box_cluster.append(cid)
    changed = {cid: _seen(current[cid], np.mean(found, axis=0), time, night, event_gap_s, config)
               for cid, found in matched.items()}
    current.update(changed)
    kept, removed = _forget(list(current.values()), time, config, keep=set(changed))
    verdicts = tuple(cid if cid is not None and changed[cid].suppressed else None for cid in box_cluster)
    return Observation(tuple(kept), verdicts, tuple(changed.values()), tuple(removed))


def _match(box: np.ndarray, clusters: list[Cluster], threshold: float) -> str | None:
    """The cluster whose box overlaps ``box`` most, if by ``threshold`` IoU."""
    if not clusters:
        return None
    overlaps = iou(box, np.array([c.box for c in clusters]))
    best = int(overlaps.argmax())
    return clusters[best].id if overlaps[best] >= threshold else None


def _start(source_id: str, box: np.ndarray, time: datetime) -> Cluster:
    """A new cluster, not yet seen in any event (``_seen`` counts the frame that starts it)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return Cluster(cluster_id(source_id, (x1, y1, x2, y2), time), source_id, (x1, y1, x2, y2), 0, 0, time, time)


def _seen(cluster: Cluster, box: np.ndarray, time: datetime, night: bool, event_gap_s: float,
          config: SuppressionConfig) -> Cluster:
    """The cluster matched once more at ``time``; suppressed once its evidence is enough."""
    new_event = cluster.events == 0 or abs((time - cluster.last_seen).total_seconds()) > event_gap_s
    weight = 1.0 / min(cluster.hits + 1, _FOLLOW)
    x1, y1, x2, y2 = (float(v) for v in np.asarray(cluster.box) + (box - np.asarray(cluster.box)) * weight)
    updated = replace(
        cluster, box=(x1, y1, x2, y2), hits=cluster.hits + 1,
        events=cluster.events + int(new_event), first_seen=time if cluster.events == 0 else cluster.first_seen,
        last_seen=max(cluster.last_seen, time), day_events=cluster.day_events + int(new_event and not night),
        night_events=cluster.night_events + int(new_event and night))
    enough = (updated.events >= config.min_events
              and updated.last_seen - updated.first_seen >= timedelta(hours=config.min_span_hours))
    if not updated.suppressed and enough:
        return replace(updated, state="suppressed", since=time)
    return updated


def _forget(clusters: list[Cluster], now: datetime, config: SuppressionConfig,
            keep: set[str]) -> tuple[list[Cluster], list[str]]:
    """Clusters not seen for ``window_days`` go, then the stalest beyond ``max_clusters`` (suppressed
    ones last; never one of ``keep``, this frame's)."""
    horizon = now - timedelta(days=config.window_days)
    live = [c for c in clusters if c.id in keep or c.last_seen >= horizon]
    removed = [c.id for c in clusters if c.id not in keep and c.last_seen < horizon]
    if len(live) > config.max_clusters:
        order = sorted((c for c in live if c.id not in keep), key=lambda c: (c.suppressed, c.last_seen))
        evicted = {c.id for c in order[:len(live) - config.max_clusters]}
        removed += sorted(evicted)
        live = [c for c in live if c.id not in evicted]
    return live, removed
