"""Incoming MQTT messages checked against the devices' JSON Schemas: a typed record or a rejection.

Nothing raises: a payload larger than its kind's limit, not UTF-8, not strict JSON (NaN, Infinity, a
number beyond float64 or an integer beyond 64 bits, text with a lone surrogate), nested too deep, not an
object, on an unknown topic, against its schema (a time that is no real date included), with a vector
too wide or a crop that does not decode as declared becomes a ``Rejected`` value carrying the reason,
which the store logs. The limits are ``ingest`` in the central config (``central.config.IngestConfig``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache

import jsonschema
import numpy as np

from central.config import IngestConfig
from central.crops import CropError, verified_crop
from common.wire import KINDS, load_schema

DEFAULT_LIMITS = IngestConfig()
RAISE_IF_RIGHT = "raise that limit if the device is right"


@dataclass(frozen=True)
class Message:
    """A valid payload of one kind (``status``, ``alert``, ``event`` or ``embedding``)."""

    kind: str
    topic: str
    payload: dict
    raw: bytes
    crop: bytes | None = None  # an embedding's crop, decoded and re-encoded by central

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
        norm = float(np.linalg.norm(vector.astype(np.float64)))  # float32 overflows near its largest values
        if norm == 0:
            raise ValueError("sighting vector is all zeros")
        object.__setattr__(self, "vector", (vector / norm).astype(np.float32))


def instant(text: str) -> datetime:
    """The moment an ISO 8601 time names, with its UTC offset (none: an enrolled image's camera-local time,
    taken as UTC), so times of cameras in different zones compare as the clock runs.

    Raises:
        ValueError: not a real time (2023-02-30, hour 99, year 0, offset +99:99).
    """
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


TIMES = jsonschema.FormatChecker(formats=())


@TIMES.checks("date-time", raises=ValueError)
def _real_time(value: object) -> bool:
    """A time the schema's pattern admits is also a real one: stored, 2023-02-30 stopped every Camtrap DP
    export once reviewed."""
    return not isinstance(value, str) or isinstance(instant(value), datetime)


@cache
def validator(kind: str) -> jsonschema.Draft202012Validator:
    """The compiled JSON Schema validator of one kind (times checked as real dates)."""
    return jsonschema.Draft202012Validator(load_schema(kind), format_checker=TIMES)


def _not_a_number(text: str) -> float:
    raise ValueError(f"{text} is not a number (strict JSON has no NaN or Infinity)")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is beyond float64's range")
    return value


def _int64(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"integer of {len(text)} digits is beyond 64 bits")
    return value


def kind_of(topic: str, prefix: str) -> str | None:
    """The kind of ``<prefix>/<device>/<kind>``, or None for any other topic."""
    head, _, rest = topic.partition(prefix + "/")
    parts = rest.split("/") if not head else []
    return parts[1] if len(parts) == 2 and parts[0] and parts[1] in KINDS else None


def parse(topic: str, raw: bytes, prefix: str, limits: IngestConfig = DEFAULT_LIMITS) -> Message | Rejected:
    """Decode and validate one payload received on ``topic``, within ``limits``."""
    kind = kind_of(topic, prefix)
    if kind is None:
        return Rejected(topic, f"topic is not {prefix}/<device>/<{'|'.join(KINDS)}>", raw)
    payload = _decoded(kind, raw, limits)
    if isinstance(payload, str):
        return Rejected(topic, payload, raw)
    message_id = payload.get("id") if isinstance(payload.get("id"), str) else None
    problem = _schema_problem(kind, payload) or _consistency_problem(topic, kind, payload, limits)
    if problem:
        return Rejected(topic, problem, raw, message_id)
    try:
        crop = verified_crop(payload["crop"], limits.max_crop_pixels) if payload.get("crop") else None
    except CropError as exc:
        return Rejected(topic, f"embedding {exc}", raw, message_id)
    return Message(kind, topic, payload, raw, crop)


def _decoded(kind: str, raw: bytes, limits: IngestConfig) -> dict | str:
    """The payload's JSON object, or why there is none."""
    most = getattr(limits.max_bytes, kind)
    if len(raw) > most:
        return f"{kind} payload is {len(raw)} bytes, more than ingest.max_bytes.{kind} ({most}); {RAISE_IF_RIGHT}"
    try:
        # strict: a NaN stored in a field ("health", a bbox) broke later reads of the whole store (SQLite's
        # json_extract) and exports (JSON with NaN); a 400-digit integer overflowed the vector check
        payload = json.loads(raw.decode("utf-8"), parse_constant=_not_a_number, parse_float=_finite, parse_int=_int64)
    except UnicodeDecodeError as exc:
        return f"payload is not UTF-8 ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    except RecursionError:
        return f"payload is nested deeper than ingest.max_json_depth ({limits.max_json_depth}); {RAISE_IF_RIGHT}"
    except ValueError as exc:  # NaN, 1e999, an integer beyond 64 bits (or of more than 4,300 digits)
        return f"payload is not JSON that can be read: {str(exc)[:200]}"
    if not isinstance(payload, dict):
        return f"payload is a JSON {type(payload).__name__}, not an object"
    if json_depth(payload, limits.max_json_depth) > limits.max_json_depth:
        return f"payload is nested deeper than ingest.max_json_depth ({limits.max_json_depth}); {RAISE_IF_RIGHT}"
    if b"\\ud" in raw.lower() and not unicode_text(payload):  # only an escape can make one
        return "payload has text with a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode text"
    return payload


def unicode_text(value: object) -> bool:
    """Whether every string in a parsed JSON value (keys too) is Unicode text, with no half of a surrogate
    pair (only a JSON escape makes one; SQLite cannot store it); walked without recursion, however deep."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending += [*item.keys(), *item.values()]
        elif isinstance(item, list):
            pending += item
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode()
            except UnicodeEncodeError:
                return False
    return True


def json_depth(value: object, limit: int) -> int:
    """How deep arrays and objects nest in parsed JSON (a scalar is 0), counted no further than ``limit + 1``.

    Iterative, so any depth is measured without recursion.
    """
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def _schema_problem(kind: str, payload: dict) -> str | None:
    vector = payload.get("vector") if kind == "embedding" else None
    if isinstance(vector, list) and vector:
        # the schema says "an array of numbers": checked here in one pass, since validating
        # 1,280 items one by one through jsonschema costs ~8 ms a message
        if not all(type(v) in (int, float) for v in vector):  # finite: _decoded refuses NaN, Infinity, 1e999
            return "embedding schema: vector: every item must be a number"
        payload = {**payload, "vector": [0.0]}
    error = jsonschema.exceptions.best_match(validator(kind).iter_errors(payload))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"{kind} schema: {where[:100]}: {error.message[:300]}"


def _consistency_problem(topic: str, kind: str, payload: dict, limits: IngestConfig) -> str | None:
    device = topic.split("/")[-2]
    if payload["device"] != device:
        return f"payload device {payload['device'][:100]!r} differs from topic device {device[:100]!r}"
    return _vector_problem(payload, limits.max_vector_dim) if kind == "embedding" else None


def _vector_problem(payload: dict, max_dim: int) -> str | None:
    if payload["dim"] > max_dim:
        return f"embedding dim {payload['dim']} is more than ingest.max_vector_dim ({max_dim}); {RAISE_IF_RIGHT}"
    if payload["dim"] != len(payload["vector"]):
        return f"embedding dim {payload['dim']} but vector has {len(payload['vector'])} numbers"
    with np.errstate(over="ignore", under="ignore"):
        stored = np.asarray(payload["vector"], np.float64).astype(np.float32)  # as the store keeps it
    if not np.isfinite(stored).all():
        return "embedding vector: every item must be within float32's range (about 3.4e38)"
    if not stored.any():
        return "embedding vector is all zeros"
    return None


def sighting_of(message: Message) -> Sighting:
    """The sighting carried by a valid embedding message."""
    p = message.payload
    return Sighting(id=p["id"], device=p["device"], event_id=p["event_id"], frame_time=p["frame_time"],
                    label=p["label"], model=f"{p['model']}@{p['model_version']}", vector=np.asarray(p["vector"]),
                    crop_jpeg=message.crop, meta={"bbox": p["bbox"], "confidence": p["confidence"], "source": p["source"]})
