"""The one value every capture source yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

TimeSource = Literal["exif", "mtime", "clock"]


def camera_time(time: datetime) -> datetime:
    """``time`` with a UTC offset: a naive camera time is read as this device's local time."""
    return time if time.tzinfo is not None else time.astimezone()


@dataclass(frozen=True)
class Frame:
    """One picture from one source, or the record of why it could not be read.

    Attributes:
        source_id: the configured id of the source (``sd``, ``usb0``…).
        key: identity of the picture within its source, stable across restarts (a folder source
            uses the relative path, size and mtime), so nothing is processed twice.
        time: capture time with its UTC offset: EXIF DateTimeOriginal (with OffsetTimeOriginal
            when the camera wrote one, else read as the device's local time), else the file's
            mtime, else the clock when it was grabbed. A naive time given here is read as local.
        time_source: which of those ``time`` came from.
        rgb: (H, W, 3) uint8 pixels, or None when the frame failed.
        path: the file, for file-based sources.
        failure: why the frame could not be decoded (then ``rgb`` is None).
        flags: decoding notes, e.g. ``truncated``, ``reduced`` (huge image decoded smaller).
    """

    source_id: str
    key: str
    time: datetime
    time_source: TimeSource
    rgb: np.ndarray | None = None
    path: Path | None = None
    failure: str | None = None
    flags: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if (self.rgb is None) == (self.failure is None):
            raise ValueError("a Frame has either pixels or a failure, not both or neither")
        if self.rgb is not None and (self.rgb.ndim != 3 or self.rgb.shape[2] != 3 or self.rgb.dtype != np.uint8):
            raise ValueError(f"rgb must be (H, W, 3) uint8, got {self.rgb.shape} {self.rgb.dtype}")
        object.__setattr__(self, "time", camera_time(self.time))

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def name(self) -> str:
        """The picture as a person finds it: a file's path relative to its folder (the key without the
        size and mtime a folder source adds), else the key."""
        if self.path is not None and self.key.count(":") >= 2:
            return self.key.rsplit(":", 2)[0]
        return self.key

    @property
    def pixels(self) -> np.ndarray:
        """The (H, W, 3) pixels of a frame that decoded; ValueError for a failure frame."""
        if self.rgb is None:
            raise ValueError(f"frame {self.source_id}/{self.key} has no pixels: {self.failure}")
        return self.rgb
