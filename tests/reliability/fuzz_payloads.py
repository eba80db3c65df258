"""Hypothesis strategies for what a broker may hand the central service.

Each example is a ``Fuzzed(topic, raw, must_store)``: random bytes, random JSON (NaN and
infinities included), valid payloads of every kind built by ``edge.wire.messages`` (``must_store``),
the same payloads mutated (a key dropped or replaced, NaN, a huge vector, bytes cut or flipped),
and valid payloads on wrong topics or devices.
"""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from hypothesis import strategies as st
from PIL import Image

from common.wire import KINDS
from edge.events.bursts import Event
from edge.wire import messages

PREFIX, DEVICE = "trapedge", "cam-fuzz"


@dataclass(frozen=True)
class Fuzzed:
    """One payload to deliver; ``must_store``: an untouched valid payload on its own topic."""

    topic: str
    raw: bytes
    must_store: bool
    family: str


def _event(closed: bool = True) -> Event:
    return Event(id=f"ev-{uuid.uuid4().hex[:8]}", source_id="sd", start=datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc),
                 end=datetime(2024, 5, 1, 6, 1, tzinfo=timezone.utc), frames=3, label="bear", score=0.8, probs={"bear": 0.8, "fox": 0.1},
                 counts={"bear": 1}, closed=closed)


def _message(kind: str, dim: int, seed: int, thumbnail: bytes) -> messages.Message:
    picture = messages.Picture(thumbnail, *Image.open(io.BytesIO(thumbnail)).size)  # central checks the size
    if kind == "status":
        return messages.StatusMessage(device=DEVICE, state="online", bundle_version="1",
                                      health={"frames": seed, "disk_full": False})
    if kind == "event":
        return messages.EventMessage(device=DEVICE, site="island", event=_event(), alerted=bool(seed % 2))
    if kind == "alert":
        return messages.AlertMessage(device=DEVICE, site="island", event=_event(), thumbnail=picture)
    vector = np.random.default_rng(seed).normal(size=dim)
    return messages.EmbeddingMessage(
        device=DEVICE, event_id="ev-1", source_id="sd", frame_time=datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc),
        box=messages.Box((0.1, 0.2, 0.3, 0.4), 0.9, "bear", 0.7, "classifier"), vector=vector,
        model=f"embedder-{dim}", model_version="1", crop=picture if seed % 3 == 0 else None)


def _payload(kind: str, dim: int, seed: int, thumbnail: bytes) -> dict:
    return _message(kind, dim, seed, thumbnail).to_json()


def topic_of(kind: str, device: str = DEVICE) -> str:
    return f"{PREFIX}/{device}/{kind}"


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text()
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=5), max_leaves=20)


def _dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def valid(draw, thumbnail: bytes) -> tuple[str, dict]:
    kind = draw(st.sampled_from(KINDS))
    return kind, _payload(kind, draw(st.sampled_from([8, 128, 1280])), draw(st.integers(0, 2**31)), thumbnail)


@st.composite
def mutated(draw, thumbnail: bytes) -> Fuzzed:
    kind, payload = draw(valid(thumbnail))
    key = draw(st.sampled_from(sorted(payload)))
    how = draw(st.sampled_from(["drop", "replace", "nan", "inf", "huge_vector", "nan_in_vector", "cut", "flip"]))
    if how == "drop":
        payload.pop(key)
    elif how == "replace":
        payload[key] = draw(json_values)
    elif how in ("nan", "inf"):
        payload[key] = float("nan") if how == "nan" else float("inf")
    elif how == "huge_vector":
        size = draw(st.sampled_from([50_000, 200_000]))
        payload["vector"] = np.random.default_rng(size).normal(size=size).round(6).tolist()
        payload["dim"] = size if draw(st.booleans()) else payload.get("dim", 0)
    elif how == "nan_in_vector" and kind == "embedding":
        payload["vector"][draw(st.integers(0, len(payload["vector"]) - 1))] = draw(
            st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    raw = _dumps(payload)
    if how == "cut":
        raw = raw[: draw(st.integers(0, max(0, len(raw) - 1)))]
    elif how == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1:]
    return Fuzzed(topic_of(kind), raw, False, f"mutated:{how}")


@st.composite
def misaddressed(draw, thumbnail: bytes) -> Fuzzed:
    kind, payload = draw(valid(thumbnail))
    topic = draw(st.sampled_from([
        topic_of(kind, "cam-other"), f"{PREFIX}/{DEVICE}/frames", f"other/{DEVICE}/{kind}",
        f"{PREFIX}/{DEVICE}/{kind}/extra", f"{PREFIX}//{kind}", topic_of(draw(st.sampled_from(KINDS))),
    ]))
    return Fuzzed(topic, _dumps(payload), False, "misaddressed")


def fuzzed(thumbnail: bytes) -> st.SearchStrategy[Fuzzed]:
    """Every family, about evenly."""
    any_topic = st.sampled_from([topic_of(k) for k in KINDS])
    return st.one_of(
        st.builds(lambda t, b: Fuzzed(t, b, False, "random bytes"), any_topic, st.binary(max_size=2048)),
        st.builds(lambda t, v: Fuzzed(t, _dumps(v), False, "random json"), any_topic, json_values),
        valid(thumbnail).map(lambda kp: Fuzzed(topic_of(kp[0]), json.dumps(kp[1], separators=(",", ":")).encode(), True, "valid")),
        mutated(thumbnail),
        misaddressed(thumbnail),
    )
