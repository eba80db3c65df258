"""Compact binary alerts and embeddings for constrained links (LoRaWAN, Iridium SBD): layout v1.

A LoRaWAN payload is 51 to 222 bytes, an Iridium SBD message 340; the JSON messages are kilobytes.
These are fixed-length big-endian ``struct`` records, written on the edge (``edge/wire/compact.py``)
and read by central (``central/compact.py``), both through this module so the two never drift.

Every record starts with the same 22 bytes:

======  =====  =============================================================================
offset  bytes  field
======  =====  =============================================================================
0       1      version (high 4 bits, 1) and type (low 4 bits: 1 alert, 2 embedding)
1       4      device: the first 4 bytes of sha256(device id); central checks it against the topic
5       4      bundle: the first 4 bytes of sha256 of the bundle manifest's canonical JSON;
               names the label table and the projection (``WireTable``)
9       4      time: seconds since 1970-01-01 UTC, unsigned (an alert's sighting start, an
               embedding's frame time)
13      1      the camera's UTC offset at that time, signed quarter hours (-48..56)
14      8      event: the first 8 bytes of the event's uuid (central keeps ``xxxxxxxx-xxxx-xxxx``,
               the first three groups of the uuid the JSON messages carry)
======  =====  =============================================================================

An alert adds 5 bytes (27 in all): label index (uint16, into the bundle's wire labels), score
(uint8, /255), frames of the event so far and boxes of the label (uint8 each, capped at 255).

An embedding adds 11 bytes and the vector: box x, y, w, h (uint8 each, /255 of the frame),
detector confidence (uint8, /255), label index (uint16, 0xFFFF: none), label score (uint8, /255),
flags (bits 0-2: label source, bit 3: a label score is present, the rest 0), a float16 scale, then
the bundle's ``dim`` projected values as int8 (value = int8 × scale). With ``dim`` 189 it is 222
bytes.

Decoding never raises on input: anything truncated, oversized, of another version or type, of an
unknown bundle, with an index out of range or a value outside its field becomes ``Malformed`` with
the reason.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from common.signing import canonical_bytes

VERSION = 1
ALERT, EMBEDDING = 1, 2
TYPES = {ALERT: "alert", EMBEDDING: "embedding"}
MAX_BYTES = {"alert": 51, "embedding": 222}  # LoRaWAN's smallest and largest payloads
LABEL_SOURCES = ("detector", "classifier", "ensemble", "rollup")  # an embedding's label_source (its schema's enum)
NO_LABEL = 0xFFFF
ENCODING = "trapedge.compact/1"  # what central records as a decoded payload's encoding
MAX_OFFSET_QUARTERS = (-48, 56)  # UTC-12:00 .. UTC+14:00

HEAD = struct.Struct(">B4s4sIb8s")
ALERT_BODY = struct.Struct(">HBBB")
EMBEDDING_BODY = struct.Struct(">4BBHBBe")
ALERT_BYTES = HEAD.size + ALERT_BODY.size
EMBEDDING_HEAD_BYTES = HEAD.size + EMBEDDING_BODY.size
MAX_DIM = MAX_BYTES["embedding"] - EMBEDDING_HEAD_BYTES  # 189 int8 values
_FLAG_SCORE = 0x08


def device_tag(device: str) -> bytes:
    """The 4 bytes that name a device in a compact record: sha256 of its id, first 4 bytes."""
    return hashlib.sha256(device.encode("utf-8")).digest()[:4]


def bundle_tag(document: Mapping[str, Any]) -> bytes:
    """The 4 bytes that name a bundle: sha256 of its manifest's canonical JSON, first 4 bytes."""
    return hashlib.sha256(canonical_bytes(dict(document))).digest()[:4]


def event_ref(event_id: str) -> bytes:
    """The first 8 bytes of an event's uuid (ValueError for an id that is not a uuid)."""
    return uuid.UUID(event_id).bytes[:8]


def event_prefix(ref: bytes) -> str:
    """``xxxxxxxx-xxxx-xxxx``: the part of the event's uuid string that ``ref`` holds."""
    text = ref.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}"


@dataclass(frozen=True)
class WireTable:
    """What one bundle's compact records refer to: its tag, label table, projection size and model.

    Attributes:
        tag: ``bundle_tag`` of the manifest.
        labels: index -> label; the uint16 a record carries.
        dim: values of a compact embedding (the projection's output).
        model, version: the compact embedding's model (``<embedder>+pca<dim>``) and the bundle version.
    """

    tag: bytes
    labels: tuple[str, ...]
    dim: int
    model: str
    version: str

    def __post_init__(self) -> None:
        if len(self.tag) != 4 or not 1 <= self.dim <= MAX_DIM or not 0 < len(self.labels) < NO_LABEL:
            raise ValueError(f"wire table needs a 4-byte tag, 1..{MAX_DIM} values and 1..{NO_LABEL - 1} labels, got "
                             f"{len(self.tag)} bytes, {self.dim} values, {len(self.labels)} labels")

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> WireTable:
        """The table of a bundle manifest's JSON document (KeyError/ValueError: it has no ``compact`` entry)."""
        compact = document.get("compact")
        if not isinstance(compact, Mapping):
            raise ValueError("the bundle has no compact projection (add one: python -m export.projection BUNDLE)")
        architecture = document["models"]["embedder"]["architecture"]
        return cls(bundle_tag(document), tuple(compact["labels"]), int(compact["dim"]),
                   f"{architecture}+pca{int(compact['dim'])}", str(document["version"]))

    @property
    def embedding_bytes(self) -> int:
        return EMBEDDING_HEAD_BYTES + self.dim

    def index(self, label: str | None) -> int:
        """The uint16 of ``label`` (``NO_LABEL`` for None); ValueError for a label the table lacks."""
        if label is None:
            return NO_LABEL
        try:
            return self.labels.index(label)
        except ValueError:
            raise ValueError(f"label {label!r} is not in the bundle's wire labels") from None


@dataclass(frozen=True)
class Head:
    """The 22 bytes every compact record starts with (see the module docstring)."""

    kind: str
    device: bytes
    bundle: bytes
    time: datetime
    event: bytes

    def __post_init__(self) -> None:
        if self.kind not in MAX_BYTES or len(self.device) != 4 or len(self.bundle) != 4 or len(self.event) != 8:
            raise ValueError("a compact head needs a kind, 4-byte device and bundle tags and an 8-byte event ref")
        if self.time.tzinfo is None:
            raise ValueError(f"time {self.time.isoformat()} has no UTC offset")

    def pack(self) -> bytes:
        seconds, quarters = _pack_time(self.time)
        kind = next(code for code, name in TYPES.items() if name == self.kind)
        return HEAD.pack(VERSION << 4 | kind, self.device, self.bundle, seconds, quarters, self.event)


@dataclass(frozen=True)
class CompactAlert:
    """A watch-listed sighting: label, score, when, which device and event."""

    head: Head
    label: str
    score: float
    frames: int
    boxes: int


@dataclass(frozen=True)
class CompactEmbedding:
    """One crop's reduced embedding: its box, label and ``dim`` int8 values times ``scale``."""

    head: Head
    bbox: tuple[float, float, float, float]
    confidence: float
    label: str | None
    label_score: float | None
    label_source: str
    values: np.ndarray  # int8
    scale: float

    @property
    def vector(self) -> np.ndarray:
        """The projected vector the values stand for (float32)."""
        return self.values.astype(np.float32) * np.float32(self.scale)


@dataclass(frozen=True)
class Malformed:
    """A record that was refused, and why."""

    reason: str


def _pack_time(time: datetime) -> tuple[int, int]:
    offset = time.utcoffset() or timedelta(0)
    quarters, rest = divmod(int(offset.total_seconds()), 900)
    if rest or not MAX_OFFSET_QUARTERS[0] <= quarters <= MAX_OFFSET_QUARTERS[1]:
        raise ValueError(f"UTC offset {offset} is not a whole quarter hour within -12:00..+14:00")
    seconds = int(time.timestamp())
    if not 0 <= seconds < 2**32:
        raise ValueError(f"time {time.isoformat()} is outside 1970..2106")
    return seconds, quarters


def _byte(value: float | None, name: str) -> int:
    if value is None or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return round(float(value) * 255)


def quantize(vector: np.ndarray) -> tuple[np.ndarray, float]:
    """int8 values and a float16-exact scale with ``values * scale`` ≈ ``vector`` (ValueError: zero or not finite)."""
    vector = np.asarray(vector, np.float64)
    peak = float(np.abs(vector).max()) if vector.size else 0.0
    scale = float(np.float16(peak / 127))
    if not np.isfinite(scale) or scale <= 0 or not np.isfinite(vector).all():
        raise ValueError(f"vector of peak {peak} cannot be quantized (zero, not finite or beyond float16)")
    return np.clip(np.round(vector / scale), -127, 127).astype(np.int8), scale


def pack_alert(alert: CompactAlert, table: WireTable) -> bytes:
    """The bytes of ``alert`` (ValueError: a label the table lacks, a score outside [0, 1], a bad time)."""
    if alert.label is None:
        raise ValueError("a compact alert needs a label")
    body = ALERT_BODY.pack(table.index(alert.label), _byte(alert.score, "score"), min(max(alert.frames, 0), 255),
                           min(max(alert.boxes, 0), 255))
    return alert.head.pack() + body


def pack_embedding(embedding: CompactEmbedding, table: WireTable) -> bytes:
    """The bytes of ``embedding`` (ValueError: its values are not ``table.dim`` int8, or a field is out of range)."""
    values = np.asarray(embedding.values)
    if values.dtype != np.int8 or values.shape != (table.dim,):
        raise ValueError(f"a compact embedding of this bundle has {table.dim} int8 values, got {values.dtype} "
                         f"{values.shape}")
    if embedding.label_source not in LABEL_SOURCES:
        raise ValueError(f"label_source {embedding.label_source!r} has no compact code")
    flags = LABEL_SOURCES.index(embedding.label_source) | (_FLAG_SCORE if embedding.label_score is not None else 0)
    box = [_byte(v, "bbox") for v in embedding.bbox]
    score = _byte(embedding.label_score, "label_score") if embedding.label_score is not None else 0
    body = EMBEDDING_BODY.pack(*box, _byte(embedding.confidence, "confidence"), table.index(embedding.label), score,
                               flags, embedding.scale)
    return embedding.head.pack() + body + values.tobytes()


def decode(raw: bytes, kind: str, tables: Mapping[bytes, WireTable]) -> CompactAlert | CompactEmbedding | Malformed:
    """Read one record received as ``kind``, given the known bundles' tables by tag; never raises on ``raw``."""
    if kind not in MAX_BYTES:
        return Malformed(f"no compact form of {kind!r} messages")
    if len(raw) > MAX_BYTES[kind]:
        return Malformed(f"compact {kind} is {len(raw)} bytes, more than the {MAX_BYTES[kind]} a record may have")
    if len(raw) < HEAD.size:
        return Malformed(f"compact {kind} is {len(raw)} bytes, shorter than the {HEAD.size}-byte head")
    head = _head(raw, kind, tables)
    if isinstance(head, Malformed):
        return head
    table = tables[head.bundle]
    return _alert(raw, head, table) if kind == "alert" else _embedding(raw, head, table)


def _head(raw: bytes, kind: str, tables: Mapping[bytes, WireTable]) -> Head | Malformed:
    first, device, bundle, seconds, quarters, event = HEAD.unpack_from(raw)
    version, code = first >> 4, first & 0x0F
    if version != VERSION:
        return Malformed(f"compact version {version}; this central reads version {VERSION}")
    if TYPES.get(code) != kind:
        return Malformed(f"compact record of type {code} ({TYPES.get(code, 'unknown')}) on the {kind} topic")
    if bundle not in tables:
        return Malformed(f"compact {kind} of unknown bundle {bundle.hex()}: list that bundle's directory in "
                         "ingest.compact_bundles")
    if not MAX_OFFSET_QUARTERS[0] <= quarters <= MAX_OFFSET_QUARTERS[1]:
        return Malformed(f"compact {kind} UTC offset of {quarters} quarter hours is outside -12:00..+14:00")
    zone = timezone(timedelta(minutes=15 * quarters))
    return Head(kind, device, bundle, datetime.fromtimestamp(seconds, timezone.utc).astimezone(zone), event)


def _label(index: int, table: WireTable, kind: str) -> str | None | Malformed:
    if index == NO_LABEL:
        return None
    if index >= len(table.labels):
        return Malformed(f"compact {kind} label index {index} is outside the bundle's {len(table.labels)} labels")
    return table.labels[index]


def _alert(raw: bytes, head: Head, table: WireTable) -> CompactAlert | Malformed:
    if len(raw) != ALERT_BYTES:
        return Malformed(f"compact alert is {len(raw)} bytes; version {VERSION} alerts are {ALERT_BYTES}")
    index, score, frames, boxes = ALERT_BODY.unpack_from(raw, HEAD.size)
    label = _label(index, table, "alert")
    if isinstance(label, Malformed):
        return label
    if label is None:
        return Malformed("compact alert without a label")
    return CompactAlert(head, label, score / 255, frames, boxes)


def _embedding(raw: bytes, head: Head, table: WireTable) -> CompactEmbedding | Malformed:
    if len(raw) != table.embedding_bytes:
        return Malformed(f"compact embedding is {len(raw)} bytes; bundle {head.bundle.hex()}'s are "
                         f"{table.embedding_bytes} ({table.dim} values)")
    x, y, w, h, confidence, index, score, flags, scale = EMBEDDING_BODY.unpack_from(raw, HEAD.size)
    label = _label(index, table, "embedding")
    if isinstance(label, Malformed):
        return label
    source = flags & 0x07
    if flags & ~(0x07 | _FLAG_SCORE) or source >= len(LABEL_SOURCES):
        return Malformed(f"compact embedding flags {flags:#04x}: unknown label source or reserved bits set")
    if not np.isfinite(scale) or scale <= 0:
        return Malformed(f"compact embedding scale {scale} is not a positive finite number")
    values = np.frombuffer(raw, np.int8, table.dim, EMBEDDING_HEAD_BYTES).copy()
    if not values.any():
        return Malformed("compact embedding vector is all zeros")
    label_score = score / 255 if flags & _FLAG_SCORE else None
    return CompactEmbedding(head, (x / 255, y / 255, w / 255, h / 255), confidence / 255, label, label_score,
                            LABEL_SOURCES[source], values, float(scale))
