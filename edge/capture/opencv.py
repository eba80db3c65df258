"""OpenCV source: a USB camera (index), an RTSP stream (URL) or a video file."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

import cv2
from pydantic import BaseModel, ConfigDict, Field

from edge.capture.frame import Frame

KEY = "opencv"
UNAVAILABLE_REASON = ""


class Config(BaseModel):
    """A camera or stream opened with ``cv2.VideoCapture``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["opencv"] = "opencv"
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", title="Source id")
    url: int | str = Field(title="USB camera index, RTSP URL or video file")
    fps: float = Field(1.0, gt=0, title="Frames taken per second (the rest are dropped)")
    reconnect_seconds: float = Field(5.0, gt=0, title="First wait before reopening a failed stream (doubles, max 60 s)")


class Source:
    """Grabs frames at ``fps``; reopens the stream with back-off when it fails."""

    def __init__(self, config: Config, is_done):
        self.id, self.config = config.id, config
        self.is_file = isinstance(config.url, str) and "://" not in config.url
        self.capture: cv2.VideoCapture | None = None
        self.session = datetime.now().strftime("%Y%m%dT%H%M%S")
        self.count = 0
        self.next_grab = 0.0
        self.retry_at, self.backoff = 0.0, config.reconnect_seconds
        self.finished = False

    def _open(self) -> bool:
        self.capture = cv2.VideoCapture(self.config.url)
        if self.capture.isOpened():
            self.backoff = self.config.reconnect_seconds
            return True
        self.capture.release()
        self.capture = None
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(60.0, self.backoff * 2)
        return False

    def _frame(self, bgr) -> Frame:
        self.count += 1
        if self.is_file:
            ms = self.capture.get(cv2.CAP_PROP_POS_MSEC)
            stamp = datetime.fromtimestamp(0) if ms != ms else datetime.fromtimestamp(ms / 1000)
            return Frame(self.id, f"{self.config.url}#{self.count}", stamp, "clock", rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        return Frame(self.id, f"{self.session}-{self.count}", datetime.now(), "clock",
                     rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))

    def poll(self) -> list[Frame]:
        """At most one frame, when the next one is due (video files: as fast as asked)."""
        now = time.monotonic()
        if self.finished or now < self.retry_at or (not self.is_file and now < self.next_grab):
            return []
        if self.capture is None and not self._open():
            return []
        step = 1 if not self.is_file else max(1, round((self.capture.get(cv2.CAP_PROP_FPS) or self.config.fps) / self.config.fps))
        for _ in range(step - 1):
            self.capture.grab()
        ok, bgr = self.capture.read()
        if not ok:
            if self.is_file:
                self.finished = True
            else:
                self.capture.release()
                self.capture = None
                self.retry_at = now + self.backoff
            return []
        self.next_grab = now + 1.0 / self.config.fps
        return [self._frame(bgr)]

    def close(self) -> None:
        """Release the camera."""
        if self.capture is not None:
            self.capture.release()
            self.capture = None
