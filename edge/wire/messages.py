"""The MQTT messages: one frozen dataclass per kind, each with the one ``encode()`` that writes it.

Every message carries ``id`` (a fresh uuid4, kept by the outbox across retries), ``schema``
(``trapedge.<kind>/<version>``), ``device`` and ``time``. ``time`` always means one thing: when
the message was built, in UTC. Camera times (an event's ``start`` and ``end``, an embedding's
``frame_time``) carry the UTC offset the frame was taken at. The JSON Schema of each kind is the
contract (``common/schemas/<kind>.schema.json``); ``encode()`` refuses NaN and infinities rather
than send invalid JSON.
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal

import numpy as np

from common.wire import MAX_CROP_BYTES, SCHEMAS, check_device
from edge.events.bursts import Event

STATES = ("online", "offline")


_MESSAGE_NAMESPACE = uuid.UUID("0c7a4a52-9a43-4f58-8d0e-3b1f6f1d2e77")


def new_id() -> str:
    """A message id, kept across every retry of that message."""
    return str(uuid.uuid4())


def stable_id(device: str, kind: str, *parts: object) -> str:
    """The id of a message that says one thing about one frame or event (uuid5 of what it is about):
    analysing the same file again (a lost database, a restart before the commit) makes the same id,
    so central, which keeps one message per device and id, never counts a sighting twice."""
    return str(uuid.uuid5(_MESSAGE_NAMESPACE, "/".join([device, kind, *map(str, parts)])))


def _built_now() -> datetime:
    """When a message is built: now, in UTC."""
    return datetime.now(timezone.utc)


def iso(time: datetime) -> str:
    """ISO 8601 with milliseconds and the UTC offset (a naive time is refused)."""
    if time.tzinfo is None:
        raise ValueError(f"time {time.isoformat()} has no UTC offset")
    return time.isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Picture:
    """A JPEG that travels inside a message (alert thumbnail, embedding crop)."""

    jpeg: bytes
    width: int
    height: int

    def __post_init__(self) -> None:
        if not self.jpeg or self.width < 1 or self.height < 1:
            raise ValueError(f"a picture needs JPEG bytes and a size, got {len(self.jpeg)} bytes {self.width}x{self.height}")

    def to_json(self) -> dict[str, Any]:
        return {"format": "jpeg", "width": int(self.width), "height": int(self.height), "bytes": len(self.jpeg),
                "base64": base64.b64encode(self.jpeg).decode("ascii")}


@dataclass(frozen=True, kw_only=True)
class Message:
    """What every message has; subclasses add their fields in ``body()``."""

    kind: ClassVar[str] = ""
    device: str
    id: str = field(default_factory=new_id)
    time: datetime = field(default_factory=_built_now)

    def __post_init__(self) -> None:
        check_device(self.device)
        iso(self.time)

    def body(self) -> dict[str, Any]:
        """The kind's own fields, JSON-ready."""
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The whole payload, JSON-ready."""
        return {"id": self.id, "schema": SCHEMAS[self.kind], "device": self.device, "time": iso(self.time),
                **self.body()}

    def encode(self) -> bytes:
        """Compact UTF-8 JSON; NaN and infinities raise ValueError."""
        return json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, kw_only=True)
class StatusMessage(Message):
    """The retained device status: ``online`` with health figures, or ``offline`` (last will, clean stop)."""

    kind: ClassVar[str] = "status"
    state: Literal["online", "offline"]
    bundle_version: str | None = None
    health: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.state not in STATES:
            raise ValueError(f"status state must be one of {STATES}, got {self.state!r}")

    def body(self) -> dict[str, Any]:
        return {"state": self.state, "bundle_version": self.bundle_version,
                "health": dict(self.health) if self.health is not None else None}


def _event_fields(event: Event) -> dict[str, Any]:
    return {"event_id": event.id, "source": event.source_id, "start": iso(event.start), "label": event.label,
            "score": float(event.score), "counts": {label: int(n) for label, n in event.counts.items()},
            "frames": int(event.frames)}


@dataclass(frozen=True, kw_only=True)
class EventMessage(Message):
    """One burst, sent once when it closes."""

    kind: ClassVar[str] = "event"
    site: str | None
    event: Event
    alerted: bool
    alert_reason: str | None = None  # why it did or did not alert (edge.events.rules.alert_reason)

    def body(self) -> dict[str, Any]:
        ranked = sorted(self.event.probs.items(), key=lambda item: -item[1])
        return {"site": self.site, **_event_fields(self.event), "end": iso(self.event.end),
                "probs": [[label, float(p)] for label, p in ranked], "closed": bool(self.event.closed),
                "alerted": bool(self.alerted),
                **({"alert_reason": self.alert_reason[:300]} if self.alert_reason is not None else {})}


@dataclass(frozen=True, kw_only=True)
class AlertMessage(Message):
    """A watch-listed sighting (the open event as it stood when it alerted), with its thumbnail."""

    kind: ClassVar[str] = "alert"
    site: str | None
    event: Event
    thumbnail: Picture | None
    file: str | None = None  # the frame that raised it, as its source names it

    def body(self) -> dict[str, Any]:
        return {"site": self.site, **_event_fields(self.event), "file": self.file,
                "thumbnail": self.thumbnail.to_json() if self.thumbnail else None}


@dataclass(frozen=True)
class Box:
    """One detection as it leaves the device: where it is, how sure the detector was, its one label."""

    bbox: tuple[float, float, float, float]
    confidence: float
    label: str | None
    label_score: float | None
    label_source: Literal["detector", "classifier", "ensemble", "whole_frame", "rollup"]

    def __post_init__(self) -> None:
        if len(self.bbox) != 4 or not all(0.0 <= float(v) <= 1.0 for v in self.bbox):
            raise ValueError(f"bbox must be 4 numbers (x, y, w, h) in [0, 1], got {list(self.bbox)}")

    def to_json(self) -> dict[str, Any]:
        return {"bbox": [float(v) for v in self.bbox], "confidence": float(self.confidence), "label": self.label,
                "label_score": None if self.label_score is None else float(self.label_score),
                "label_source": self.label_source}


@dataclass(frozen=True, kw_only=True)
class EmbeddingMessage(Message):
    """One animal's embedding for central re-identification, optionally with its crop."""

    kind: ClassVar[str] = "embedding"
    event_id: str
    source_id: str
    frame_time: datetime
    box: Box
    vector: np.ndarray
    model: str
    model_version: str
    crop: Picture | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        vector = np.asarray(self.vector, dtype=np.float64)
        if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
            raise ValueError(f"embedding vector must be 1-D, non-empty and finite, got shape {vector.shape}")
        if self.crop is not None and len(self.crop.jpeg) > MAX_CROP_BYTES:
            raise ValueError(f"embedding crop is {len(self.crop.jpeg)} bytes; at most {MAX_CROP_BYTES} may be sent")
        object.__setattr__(self, "vector", vector)

    def body(self) -> dict[str, Any]:
        crop = {"crop": self.crop.to_json()} if self.crop is not None else {}
        return {"event_id": self.event_id, "source": self.source_id, "frame_time": iso(self.frame_time),
                **self.box.to_json(), "model": self.model, "model_version": self.model_version,
                "dim": int(self.vector.size), "vector": np.round(self.vector, 6).tolist(), **crop}
