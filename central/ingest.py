"""Incoming MQTT messages checked against the devices' JSON Schemas: a typed record or a rejection.

Nothing raises: a payload that is not UTF-8, not JSON, not an object, on an unknown topic or
against its schema becomes a ``Rejected`` value carrying the reason, which the store logs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, field
from functools import cache

import jsonschema
import numpy as np

from common.wire import KINDS, MAX_CROP_BYTES, load_schema


@dataclass(frozen=True)
class Message:
    """A valid payload of one kind (``status``, ``alert``, ``event`` or ``embedding``)."""

    kind: str
    topic: str
    payload: dict
    raw: bytes

    @property
    def id(self) -> str:
        return self.payload["id"]

    @property
    def device(self) -> str:
        return self.payload["device"]


@dataclass(frozen=True)
class Rejected:
    """A payload that could not be accepted, and why."""

    topic: str
    reason: str
    raw: bytes
    message_id: str | None = None


@dataclass(frozen=True)
class Sighting:
    """One animal image to re-identify: its L2-normalised vector and, if sent, its crop JPEG."""

    id: str
    device: str
    event_id: str
    frame_time: str
    label: str | None
    model: str
    vector: np.ndarray
    crop_jpeg: bytes | None = None
    name: str | None = None  # a file name, for enrolled images
    edge_jpeg: bytes | None = None
    individual: str | None = None  # a known identity, for enrolled gallery images
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        vector = np.asarray(self.vector, dtype=np.float32)
        if vector.ndim != 1 or vector.size == 0 or not np.isfinite(vector).all():
            raise ValueError(f"sighting vector must be 1-D, non-empty and finite, got shape {vector.shape}")
        norm = float(np.linalg.norm(vector))
        if norm == 0:
            raise ValueError("sighting vector is all zeros")
        object.__setattr__(self, "vector", vector / norm)


@cache
def validator(kind: str) -> jsonschema.Draft202012Validator:
    """The compiled JSON Schema validator of one kind."""
    return jsonschema.Draft202012Validator(load_schema(kind))


def kind_of(topic: str, prefix: str) -> str | None:
    """The kind of ``<prefix>/<device>/<kind>``, or None for any other topic."""
    head, _, rest = topic.partition(prefix + "/")
    parts = rest.split("/") if not head else []
    return parts[1] if len(parts) == 2 and parts[0] and parts[1] in KINDS else None


def parse(topic: str, raw: bytes, prefix: str) -> Message | Rejected:
    """Decode and validate one payload received on ``topic``."""
    kind = kind_of(topic, prefix)
    if kind is None:
        return Rejected(topic, f"topic is not {prefix}/<device>/<{'|'.join(KINDS)}>", raw)
    try:
        payload = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return Rejected(topic, f"payload is not UTF-8 ({exc.reason} at byte {exc.start})", raw)
    except json.JSONDecodeError as exc:
        return Rejected(topic, f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", raw)
    if not isinstance(payload, dict):
        return Rejected(topic, f"payload is a JSON {type(payload).__name__}, not an object", raw)
    message_id = payload.get("id") if isinstance(payload.get("id"), str) else None
    problem = _schema_problem(kind, payload) or _consistency_problem(topic, kind, payload)
    if problem:
        return Rejected(topic, problem, raw, message_id)
    return Message(kind, topic, payload, raw)


def _schema_problem(kind: str, payload: dict) -> str | None:
    vector = payload.get("vector") if kind == "embedding" else None
    if isinstance(vector, list) and vector:
        # the schema says "an array of numbers": checked here in one pass, since validating
        # 1,280 items one by one through jsonschema costs ~8 ms a message
        if not all(type(v) in (int, float) for v in vector):
            return "embedding schema: vector: every item must be a number"
        if not all(math.isfinite(v) for v in vector):  # json.loads takes NaN, Infinity and 1e999
            return "embedding schema: vector: every item must be a finite number"
        payload = {**payload, "vector": [0.0]}
    error = jsonschema.exceptions.best_match(validator(kind).iter_errors(payload))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{kind} schema: {where}: {error.message[:300]}"


def _consistency_problem(topic: str, kind: str, payload: dict) -> str | None:
    device = topic.split("/")[-2]
    if payload["device"] != device:
        return f"payload device {payload['device']!r} differs from topic device {device!r}"
    if kind == "embedding":
        if payload["dim"] != len(payload["vector"]):
            return f"embedding dim {payload['dim']} but vector has {len(payload['vector'])} numbers"
        if not any(payload["vector"]):
            return "embedding vector is all zeros"
        if payload.get("crop") is not None and _crop_bytes(payload["crop"]) is None:
            return "embedding crop is not base64 JPEG data of at most 256 KiB"
    return None


def _crop_bytes(crop: dict) -> bytes | None:
    try:
        data = base64.b64decode(crop["base64"], validate=True)
    except (binascii.Error, KeyError, TypeError, ValueError):
        return None
    return data if data[:3] == b"\xff\xd8\xff" and len(data) <= MAX_CROP_BYTES else None


def sighting_of(message: Message) -> Sighting:
    """The sighting carried by a valid embedding message."""
    p = message.payload
    crop = _crop_bytes(p["crop"]) if p.get("crop") else None
    return Sighting(id=p["id"], device=p["device"], event_id=p["event_id"], frame_time=p["frame_time"],
                    label=p["label"], model=f"{p['model']}@{p['model_version']}", vector=np.asarray(p["vector"]),
                    crop_jpeg=crop, meta={"bbox": p["bbox"], "confidence": p["confidence"], "source": p["source"]})
