"""What every frame source offers (the seam the plugins in this package fill)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

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


@runtime_checkable
class WakingSource(Protocol):
    """A source that can say when it may have frames, so that the service sleeps until then instead of
    waking on a timer (the folder source with file-close notifications)."""

    def wake_fd(self) -> int | None:
        """A descriptor that turns readable when ``poll`` may have frames; None when only polling tells."""
        ...
