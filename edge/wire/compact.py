"""Alert and embedding messages in their compact form (``common.compact``), for constrained links.

``mqtt.encoding`` picks, per kind, JSON (the default) or compact. The outbox always keeps the JSON
message (the contract, and what the store describes); the publisher turns a row into its compact
record as it sends it, on ``<prefix>/<device>/c/<kind>`` (``common.wire.compact_topic``). An
embedding is reduced by the bundle's projection (``projection.npy``, fitted at export:
``export/projection.py``) to 189 values and quantized to int8 with one float16 scale.

A message without a compact form (a label outside the wire table, an embedding of another bundle
or model, a time before 1970) raises ValueError: the publisher sends it as JSON instead and says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from common.compact import (
    CompactAlert,
    CompactEmbedding,
    Head,
    WireTable,
    device_tag,
    event_ref,
    pack_alert,
    pack_embedding,
    quantize,
)
from common.wire import check_device
from edge.runtime.bundle import Bundle, BundleError, read_document
from edge.runtime.manifest import Manifest


@dataclass(frozen=True)
class Projection:
    """``(x - mean) @ components.T``: the bundle's reduction of an embedding."""

    mean: np.ndarray
    components: np.ndarray

    def __post_init__(self) -> None:
        if self.mean.ndim != 1 or self.components.ndim != 2 or self.components.shape[1] != self.mean.size:
            raise ValueError(f"projection shapes do not fit: mean {self.mean.shape}, components {self.components.shape}")
        if not (np.isfinite(self.mean).all() and np.isfinite(self.components).all()):
            raise ValueError("projection holds values that are not finite")

    @classmethod
    def of(cls, bundle: Bundle) -> Projection:
        """The projection a bundle carries (its sha256 was checked when the bundle loaded).

        Raises:
            BundleError: the bundle has none, or its file is not ``dim + 1`` rows of the embedder's size.
        """
        spec = bundle.manifest.compact
        if spec is None:
            raise BundleError(f"bundle {bundle.root} has no compact projection: add one with "
                              f"`python -m export.projection {bundle.root}` (or export it again)")
        rows = np.load(bundle.root / spec.projection.path, allow_pickle=False)
        if rows.shape != (spec.dim + 1, spec.input_dim):
            raise BundleError(f"bundle {bundle.root}: {spec.projection.path} is {rows.shape}, the manifest says "
                              f"{(spec.dim + 1, spec.input_dim)}")
        return cls(rows[0].astype(np.float32), rows[1:].astype(np.float32))

    def __call__(self, vector: np.ndarray) -> np.ndarray:
        vector = np.asarray(vector, np.float32)
        if vector.shape != self.mean.shape:
            raise ValueError(f"a {vector.size}-value vector cannot be projected; the embedder gives {self.mean.size}")
        return (vector - self.mean) @ self.components.T


def reduce(vector: np.ndarray, projection: Projection) -> tuple[np.ndarray, float]:
    """The int8 values and scale a compact embedding carries for ``vector``."""
    return quantize(projection(vector))


@dataclass(frozen=True)
class CompactCodec:
    """One device's compact encoder for one bundle: its wire table, projection and embedder name."""

    device: str
    table: WireTable
    projection: Projection
    embedder: str

    @classmethod
    def of(cls, bundle: Bundle, device: str) -> CompactCodec:
        """The codec of a loaded bundle (BundleError: it has no compact entry, or its manifest changed since)."""
        document = read_document(bundle.root)
        if Manifest.model_validate(document) != bundle.manifest:
            raise BundleError(f"bundle {bundle.root}: manifest.json changed since it was loaded")
        projection = Projection.of(bundle)
        return cls(check_device(device), WireTable.of(document), projection, bundle.spec("embedder").architecture)

    def encode(self, kind: str, payload: bytes) -> bytes:
        """The compact record of one JSON message of ``kind`` (ValueError: it has none)."""
        message = json.loads(payload)
        make = {"alert": self.alert, "embedding": self.embedding}.get(kind)
        if make is None:
            raise ValueError(f"{kind} messages have no compact form")
        try:
            return make(message)
        except (KeyError, TypeError, AttributeError) as exc:  # not the JSON contract's shape
            raise ValueError(f"{kind} message does not have the fields a compact record needs ({exc!r})") from None

    def _head(self, kind: str, message: dict[str, Any], time_key: str) -> Head:
        if message.get("device") != self.device:
            raise ValueError(f"message of device {message.get('device')!r}, this codec is {self.device!r}'s")
        return Head(kind, device_tag(self.device), self.table.tag, datetime.fromisoformat(message[time_key]),
                    event_ref(message["event_id"]))

    def alert(self, message: dict[str, Any]) -> bytes:
        """An alert message's record: label, score, start, event, frames and the label's boxes."""
        alert = CompactAlert(self._head("alert", message, "start"), message["label"], message["score"],
                             int(message["frames"]), int(message["counts"].get(message["label"], 0)))
        return pack_alert(alert, self.table)

    def embedding(self, message: dict[str, Any]) -> bytes:
        """An embedding message's record: box, label and the reduced vector (of this bundle's embedder only)."""
        model = (message.get("model"), message.get("model_version"))
        if model != (self.embedder, self.table.version):
            raise ValueError(f"embedding of model {model[0]}@{model[1]}; this bundle's projection is for "
                             f"{self.embedder}@{self.table.version}")
        values, scale = reduce(np.asarray(message["vector"], np.float32), self.projection)
        embedding = CompactEmbedding(self._head("embedding", message, "frame_time"), tuple(message["bbox"]),
                                     message["confidence"], message["label"], message["label_score"],
                                     message["label_source"], values, scale)
        return pack_embedding(embedding, self.table)
