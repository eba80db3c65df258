"""The contract between devices and central: message kinds, schema versions, topics, size limits.

Each kind of MQTT message has a JSON Schema (draft 2020-12) in ``common/schemas/``; devices build
payloads that satisfy it (``edge/wire/messages.py``) and central validates every payload against it
(``central/ingest.py``). Topics are ``<prefix>/<device>/<kind>``; alerts and embeddings may instead go
as compact binary records (``common/compact.py``) on ``<prefix>/<device>/c/<kind>``.
"""

from __future__ import annotations

import json
from importlib import resources

SCHEMAS: dict[str, str] = {
    "status": "trapedge.status/1",
    "alert": "trapedge.alert/2",
    "event": "trapedge.event/2",
    "embedding": "trapedge.embedding/2",
}
KINDS = tuple(SCHEMAS)
MAX_CROP_BYTES = 256 * 1024  # the optional crop JPEG of an embedding message
COMPACT_KINDS = ("alert", "embedding")  # the kinds with a compact binary form, on <prefix>/<device>/c/<kind>
COMPACT_LEVEL = "c"
_FORBIDDEN_IN_LEVEL = ("/", "+", "#", "\x00")


def check_device(device: str) -> str:
    """Return ``device`` if it can be one MQTT topic level, else raise ValueError."""
    if not isinstance(device, str) or not device:
        raise ValueError(f"device id must be a non-empty string, got {device!r}")
    bad = [c for c in _FORBIDDEN_IN_LEVEL if c in device]
    if bad:
        raise ValueError(f"device id {device!r} must not contain {' '.join(map(repr, bad))} (MQTT topic syntax)")
    if any(c < " " or c == "\x7f" for c in device):  # a newline in an id forged lines in central's log
        raise ValueError(f"device id {device!r} must not contain control characters")
    return device


def check_prefix(prefix: str) -> str:
    """Return ``prefix`` if it can lead a topic (levels separated by ``/``), else raise ValueError."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ValueError(f"topic prefix {prefix!r} must be non-empty levels separated by single '/'")
    if any(c in prefix for c in ("+", "#", "\x00")):
        raise ValueError(f"topic prefix {prefix!r} must not contain MQTT wildcards")
    return prefix


def check_kind(kind: str) -> str:
    """Return ``kind`` if it is a message kind, else raise ValueError."""
    if kind not in SCHEMAS:
        raise ValueError(f"unknown message kind {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def topic(prefix: str, device: str, kind: str) -> str:
    """``<prefix>/<device>/<kind>``, the one topic each kind of message goes to."""
    return f"{check_prefix(prefix)}/{check_device(device)}/{check_kind(kind)}"


def compact_topic(prefix: str, device: str, kind: str) -> str:
    """``<prefix>/<device>/c/<kind>``: where a kind's compact records go (``common/compact.py``)."""
    if kind not in COMPACT_KINDS:
        raise ValueError(f"{kind!r} messages have no compact form; only {', '.join(COMPACT_KINDS)} do")
    return f"{check_prefix(prefix)}/{check_device(device)}/{COMPACT_LEVEL}/{kind}"


def load_schema(kind: str) -> dict:
    """The JSON Schema (draft 2020-12) of one kind of payload, from the installed package."""
    text = resources.files("common").joinpath("schemas", f"{check_kind(kind)}.schema.json").read_text("utf-8")
    return json.loads(text)
