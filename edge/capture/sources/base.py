"""What every frame source offers (the seam the plugins in this package fill)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from edge.capture.frame import Frame

IsDone = Callable[[str, str], bool]  # (source id, frame key) -> already recorded?


class SourceUnavailable(RuntimeError):
    """The source's vendor package is missing on this device."""


class FrameSource(Protocol):
    """What every source offers."""

    id: str

    def poll(self) -> Iterable[Frame]: ...

    def close(self) -> None: ...
