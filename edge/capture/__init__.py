"""Frame sources as plugins (``folder``, ``opencv``, ``picamera2``) and image decoding.

Each plugin module owns its ``KEY``, its typed ``Config`` (with a ``type`` discriminator), its
source class and ``UNAVAILABLE_REASON``; a vendor import that fails disables only that plugin.
"""

from __future__ import annotations

import importlib
from typing import Callable, Iterable, Protocol

from pydantic import BaseModel

from edge.capture.frame import Frame

PLUGINS = {
    "folder": "edge.capture.folder",
    "opencv": "edge.capture.opencv",
    "picamera2": "edge.capture.picamera2",
}
IsDone = Callable[[str, str], bool]


class SourceUnavailable(RuntimeError):
    """The source's vendor package is missing on this device."""


class FrameSource(Protocol):
    """What every source offers."""

    id: str

    def poll(self) -> Iterable[Frame]: ...

    def close(self) -> None: ...


def _module(key: str):
    if key not in PLUGINS:
        raise ValueError(f"unknown source type {key!r}; known: {', '.join(PLUGINS)}")
    return importlib.import_module(PLUGINS[key])


def config_class(key: str) -> type[BaseModel]:
    """The typed config of a source type."""
    return _module(key).Config


def create_source(config: BaseModel, is_done: IsDone) -> FrameSource:
    """Open the source ``config`` describes; ``is_done(source_id, key)`` says what was recorded."""
    module = _module(config.type)
    if module.UNAVAILABLE_REASON:
        raise SourceUnavailable(f"source {config.id!r} ({config.type}) unavailable: {module.UNAVAILABLE_REASON}")
    return module.Source(config, is_done)


def available() -> dict[str, str]:
    """Each source type mapped to ``"ok"`` or why it is unavailable."""
    return {key: _module(key).UNAVAILABLE_REASON or "ok" for key in PLUGINS}
