"""The MQTT payloads: pure builders of JSON-ready dicts, one per kind, and their topics.

Every payload carries ``id`` (a fresh uuid4, kept by the outbox across retries), ``schema``
(``trapedge.<kind>/<version>``), ``device`` and ``time``. ``time`` is when the message was built
(UTC), except in an alert, where it is the sighting: the event's start in camera time. Camera
times (event start and end, frame times) are naive local time, as the camera wrote them.
The JSON Schema of each kind lives in ``edge/schemas/<kind>.schema.json``.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime, timezone
from importlib import resources

import numpy as np

from edge.events import Event

SCHEMAS: dict[str, str] = {
    "status": "trapedge.status/1",
    "alert": "trapedge.alert/1",
    "event": "trapedge.event/1",
    "embedding": "trapedge.embedding/1",
}
KINDS = tuple(SCHEMAS)
STATES = ("online", "offline")
_FORBIDDEN_IN_LEVEL = ("/", "+", "#", "\x00")
MAX_CROP_BYTES = 256 * 1024  # the optional crop JPEG of an embedding message


def check_device(device: str) -> str:
    """Return ``device`` if it can be one MQTT topic level, else raise ValueError."""
    if not isinstance(device, str) or not device:
        raise ValueError(f"device id must be a non-empty string, got {device!r}")
    bad = [c for c in _FORBIDDEN_IN_LEVEL if c in device]
    if bad:
        raise ValueError(f"device id {device!r} must not contain {' '.join(map(repr, bad))} (MQTT topic syntax)")
    return device


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can lead a topic (levels separated by ``/``), else raise ValueError."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ValueError(f"topic prefix {prefix!r} must be non-empty levels separated by single '/'")
    if any(c in prefix for c in ("+", "#", "\x00")):
        raise ValueError(f"topic prefix {prefix!r} must not contain MQTT wildcards")
    return prefix


def topic(prefix: str, device: str, kind: str) -> str:
    """``<prefix>/<device>/<kind>``, the one topic each kind of message goes to."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    return f"{check_prefix(prefix)}/{check_device(device)}/{kind}"


def load_schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of one kind of payload, from the installed package."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    return json.loads(resources.files("edge").joinpath("schemas", f"{kind}.schema.json").read_text("utf-8"))


def encode(payload: dict) -> bytes:
    """Compact UTF-8 JSON; NaN and infinities are refused rather than sent as invalid JSON."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def status_payload(
    device: str, state: str, *, bundle_version: str | None = None, health: dict | None = None
) -> dict:
    """The retained device status (``online``, or ``offline`` as last will and at a clean stop)."""
    if state not in STATES:
        raise ValueError(f"status state must be one of {STATES}, got {state!r}")
    return {
        **_envelope("status", device),
        "state": state,
        "bundle_version": bundle_version,
        "health": dict(health) if health is not None else None,
    }


def event_payload(device: str, site: str | None, event: Event, *, alerted: bool) -> dict:
    """One burst, sent when it opens, changes and closes (the same ``event_id`` each time)."""
    return {
        **_envelope("event", device),
        "site": site,
        "event_id": event.id,
        "source": event.source_id,
        "start": _iso(event.start),
        "end": _iso(event.end),
        "frames": int(event.frames),
        "label": event.label,
        "score": float(event.score),
        "probs": _ranked(event.probs),
        "counts": _counts(event.counts),
        "closed": bool(event.closed),
        "alerted": bool(alerted),
    }


def alert_payload(
    device: str,
    site: str | None,
    event: Event,
    *,
    thumbnail_jpeg: bytes | None,
    thumbnail_size: tuple[int, int] | None,
) -> dict:
    """A watch-listed sighting, with an optional JPEG thumbnail of ``thumbnail_size`` (width, height)."""
    return {
        **_envelope("alert", device),
        "site": site,
        "event_id": event.id,
        "source": event.source_id,
        "time": _iso(event.start),
        "label": event.label,
        "score": float(event.score),
        "counts": _counts(event.counts),
        "frames": int(event.frames),
        "thumbnail": _thumbnail(thumbnail_jpeg, thumbnail_size),
    }


def embedding_payload(
    device: str,
    *,
    event_id: str,
    source_id: str,
    frame_time: datetime,
    bbox: list[float],
    confidence: float,
    label: str | None,
    label_score: float | None,
    vector: np.ndarray,
    model: str,
    model_version: str,
    crop_jpeg: bytes | None = None,
    crop_size: tuple[int, int] | None = None,
) -> dict:
    """One animal's embedding for central re-identification; ``bbox`` is normalised x, y, w, h.

    ``crop_jpeg`` (with its ``crop_size``, width and height) optionally attaches the crop as a JPEG
    of at most ``MAX_CROP_BYTES``; without it the payload has no ``crop`` key (schema version 1
    either way: the field is optional).
    """
    vector = np.asarray(vector, dtype=np.float64)
    if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
        raise ValueError(f"embedding vector must be 1-D, non-empty and finite, got shape {vector.shape}")
    box = [float(v) for v in bbox]
    if len(box) != 4 or not all(0.0 <= v <= 1.0 for v in box):
        raise ValueError(f"bbox must be 4 numbers (x, y, w, h) in [0, 1], got {box}")
    return {
        **_envelope("embedding", device),
        "event_id": event_id,
        "source": source_id,
        "frame_time": _iso(frame_time),
        "bbox": box,
        "confidence": float(confidence),
        "label": label,
        "label_score": None if label_score is None else float(label_score),
        "model": model,
        "model_version": model_version,
        "dim": int(vector.size),
        "vector": np.round(vector, 6).tolist(),
        **_crop(crop_jpeg, crop_size),
    }


def _crop(jpeg: bytes | None, size: tuple[int, int] | None) -> dict:
    if jpeg is None and size is None:
        return {}
    if jpeg is not None and len(jpeg) > MAX_CROP_BYTES:
        raise ValueError(f"embedding crop is {len(jpeg)} bytes; at most {MAX_CROP_BYTES} may be sent")
    return {"crop": _thumbnail(jpeg, size)}


def _envelope(kind: str, device: str) -> dict:
    return {
        "id": str(uuid.uuid4()),
        "schema": SCHEMAS[kind],
        "device": check_device(device),
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
    }


def _iso(time: datetime) -> str:
    return time.isoformat(timespec="milliseconds")


def _ranked(probs: dict[str, float]) -> list[list]:
    return [[label, float(p)] for label, p in sorted(probs.items(), key=lambda item: -item[1])]


def _counts(counts: dict[str, int]) -> dict[str, int]:
    return {label: int(n) for label, n in counts.items()}


def _thumbnail(jpeg: bytes | None, size: tuple[int, int] | None) -> dict | None:
    if jpeg is None and size is None:
        return None
    if jpeg is None or size is None:
        raise ValueError("thumbnail_jpeg and thumbnail_size go together")
    width, height = (int(v) for v in size)
    return {
        "format": "jpeg",
        "width": width,
        "height": height,
        "bytes": len(jpeg),
        "base64": base64.b64encode(jpeg).decode("ascii"),
    }
