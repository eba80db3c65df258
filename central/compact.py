"""Compact records (``common/compact.py``) from constrained links, read into the same messages as JSON.

A device whose ``mqtt.encoding`` sends alerts or embeddings compact publishes them on
``<prefix>/<device>/c/<kind>``. Central reads them only for the bundles listed in
``ingest.compact_bundles`` (a record names its bundle by a 4-byte tag of the manifest; the bundle
gives the label table and the projection's size). The decoded payload has the JSON message's
fields, so the store, the sightings and the review treat both alike, with these differences:

* ``id``: a uuid5 of the device and the record's bytes (a record has no room for a uuid; a QoS-1
  redelivery has the same bytes, so it is still recognised);
* ``event_id``: ``xxxxxxxx-xxxx-xxxx``, the first three groups of the event's uuid (8 bytes);
* ``encoding`` ``trapedge.compact/1`` and ``bundle`` (the tag, hex) instead of ``schema``; no
  ``time`` (when it was built), ``source``, ``site``, ``file``, thumbnail or crop;
* an embedding's model is ``<embedder>+pca<dim>`` at the bundle's version with the projection's
  ``dim`` values: a space of its own. Compact sightings are matched with compact sightings only
  (``trapedge central enrol --compact`` puts known individuals into that space); a projected vector
  is never compared with a full one.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from central.ingest import Message, Rejected
from common.compact import (
    ENCODING,
    CompactAlert,
    CompactEmbedding,
    Head,
    Malformed,
    WireTable,
    decode,
    device_tag,
    event_prefix,
)
from common.wire import COMPACT_KINDS, COMPACT_LEVEL

COMPACT_IDS = uuid.UUID("4f2b6a0e-8d1c-4e57-b3a9-2c7d5e8f1a64")


def load_tables(bundles: Iterable[Path]) -> dict[bytes, WireTable]:
    """Tag -> wire table of each bundle directory (its manifest only is read).

    Raises:
        ValueError: a directory that is not a bundle, or a bundle without a compact projection.
    """
    from edge.runtime.bundle import BundleError, read_document

    tables = {}
    for root in bundles:
        try:
            table = WireTable.of(read_document(Path(root)))
        except (BundleError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"ingest.compact_bundles: {root}: {exc}") from None
        tables[table.tag] = table
    return tables


def compact_vectors(bundle_path: Path, vectors: np.ndarray) -> tuple[np.ndarray, str]:
    """What central would store for these embedder outputs had they come compact (projected by the
    bundle, int8 and scale, back to float: the values a decoded record gives), and that space's model
    name (``<embedder>+pca<dim>@<version>``). For enrolment and evaluation in the compact space."""
    from edge.runtime.bundle import load_bundle, read_document
    from edge.wire.compact import Projection, reduce

    bundle = load_bundle(bundle_path)
    projection, table = Projection.of(bundle), WireTable.of(read_document(bundle.root))
    reduced = [reduce(vector, projection) for vector in np.asarray(vectors, np.float32)]
    restored = np.stack([values.astype(np.float32) * np.float32(scale) for values, scale in reduced])
    return restored, f"{table.model}@{table.version}"


def compact_kind_of(topic: str, prefix: str) -> str | None:
    """The kind of ``<prefix>/<device>/c/<kind>``, or None for any other topic."""
    head, _, rest = topic.partition(prefix + "/")
    parts = rest.split("/") if not head else []
    ok = len(parts) == 3 and parts[0] and parts[1] == COMPACT_LEVEL and parts[2] in COMPACT_KINDS
    return parts[2] if ok else None


def parse_compact(topic: str, raw: bytes, prefix: str, tables: Mapping[bytes, WireTable]) -> Message | Rejected:
    """Decode one compact record received on ``topic`` into a message; never raises on ``raw``."""
    kind = compact_kind_of(topic, prefix)
    if kind is None:
        return Rejected(topic, f"topic is not {prefix}/<device>/{COMPACT_LEVEL}/<{'|'.join(COMPACT_KINDS)}>", raw)
    device = topic.split("/")[-3]
    record = decode(raw, kind, tables)
    if isinstance(record, Malformed):
        return Rejected(topic, record.reason, raw)
    if record.head.device != device_tag(device):
        return Rejected(topic, f"compact {kind} device tag {record.head.device.hex()} is not topic device "
                               f"{device[:100]!r}'s ({device_tag(device).hex()})", raw)
    common = _common(device, kind, raw, record.head)
    if isinstance(record, CompactAlert):
        return Message(kind, topic, {**common, **_alert_fields(record)}, raw)
    return Message(kind, topic, {**common, **_embedding_fields(record, tables[record.head.bundle])}, raw)


def _common(device: str, kind: str, raw: bytes, head: Head) -> dict[str, Any]:
    return {"id": str(uuid.uuid5(COMPACT_IDS, f"{device}/{kind}/{raw.hex()}")), "encoding": ENCODING,
            "device": device, "bundle": head.bundle.hex(), "event_id": event_prefix(head.event)}


def _alert_fields(alert: CompactAlert) -> dict[str, Any]:
    return {"start": alert.head.time.isoformat(), "label": alert.label, "score": round(alert.score, 4),
            "frames": alert.frames, "counts": {alert.label: alert.boxes}}


def _embedding_fields(embedding: CompactEmbedding, table: WireTable) -> dict[str, Any]:
    vector = embedding.vector
    return {"source": None, "frame_time": embedding.head.time.isoformat(),
            "bbox": [round(v, 4) for v in embedding.bbox], "confidence": round(embedding.confidence, 4),
            "label": embedding.label,
            "label_score": None if embedding.label_score is None else round(embedding.label_score, 4),
            "label_source": embedding.label_source, "model": table.model, "model_version": table.version,
            "dim": int(vector.size), "vector": [float(v) for v in vector]}
