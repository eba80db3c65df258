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

    def retry_later(self, key: str) -> None:
        """A frame it gave that could not be recorded (disk full): offer it again (a file), or let it go
        (a live frame cannot come back)."""
        ...

    def close(self) -> None: ...
