"""OpenCV source: a USB camera (index or ``/dev/video*``), an RTSP stream (URL) or a video file.

A live camera or stream is read continuously by a thread. OpenCV's FFmpeg and V4L2 back-ends
buffer frames, and a reader that takes one frame a second from a 15 fps stream falls further
behind every second (minutes of latency, then a broken connection). The thread grabs every frame
and decodes one only when ``poll`` asks, so a poll gets the newest frame within a frame interval.
A video file is read in the caller's thread, ``fps`` frames per second of video, and resumes
after a restart where the store says it stopped.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import threading
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edge.capture.frame import Frame, TimeSource
from edge.capture.sources.base import IsDone, SourceUnavailable

KEY = "opencv"

# OpenCV is loaded when a source of this type opens, never at import: it costs ~37 MB of resident
# memory that a folder-only appliance does not need
if TYPE_CHECKING:
    import cv2
else:
    cv2: Any = None
UNAVAILABLE_REASON = "" if importlib.util.find_spec("cv2") else "opencv is not installed; pip install opencv-python-headless"


def load_cv2() -> Any:
    """OpenCV, imported on first use.

    Raises:
        SourceUnavailable: it is installed but does not import (a missing system library).
    """
    global cv2
    if cv2 is None:
        try:
            cv2 = importlib.import_module("cv2")
        except ImportError as exc:  # pragma: no cover - depends on the device image
            raise SourceUnavailable(f"opencv does not import ({exc}); pip install opencv-python-headless") from exc
    return cv2

log = logging.getLogger(__name__)
POLL_WAIT_S = 0.5  # longest a poll waits for a live frame it asked for
MAX_BACKOFF_S = 60.0


class Config(BaseModel):
    """A camera or stream opened with ``cv2.VideoCapture``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["opencv"] = "opencv"
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", title="Source id")
    url: int | str = Field(title="USB camera index, RTSP URL or video file")
    fps: float = Field(1.0, gt=0, title="Frames taken per second (the rest are dropped)")
    reconnect_seconds: float = Field(5.0, gt=0, title="First wait before reopening a failed stream (doubles, max 60 s)")
    live: bool | None = Field(None, title="Read as a live stream (default: camera indexes, /dev paths, URLs and "
                                          "GStreamer pipelines are live, other paths are video files)")


def is_live(url: int | str) -> bool:
    """Whether ``url`` names a camera or stream rather than a video file."""
    return isinstance(url, int) or "://" in url or url.startswith("/dev/") or "!" in url


class Source:
    """Takes frames at ``fps``; reopens a failed camera or stream with back-off."""

    def __init__(self, config: Config, is_done: IsDone):
        load_cv2()
        self.id, self.config, self.is_done = config.id, config, is_done
        self.is_file = not (is_live(config.url) if config.live is None else config.live)
        self.capture: cv2.VideoCapture | None = None
        self.session = datetime.now().strftime("%Y%m%dT%H%M%S")
        self.count = 0
        self.next_grab = 0.0
        self.retry_at, self.backoff = 0.0, config.reconnect_seconds
        self.finished = False
        self.video_start: tuple[datetime, TimeSource] = (datetime.now(), "clock")
        if not self.is_file:
            self._stop, self._wanted, self._ready = threading.Event(), threading.Event(), threading.Event()
            self._latest: tuple[np.ndarray, datetime] | None = None
            self._reader = threading.Thread(target=self._read_live, name=f"capture-{self.id}", daemon=True)
            self._reader.start()

    def _open(self) -> cv2.VideoCapture | None:
        capture = cv2.VideoCapture(self.config.url)
        if capture.isOpened():
            self.capture = capture
            if self.is_file:
                self.video_start = self._start_of_video(capture)
            return capture
        capture.release()
        self._back_off("cannot open")
        return None

    def _back_off(self, what: str) -> None:
        log.warning("source %s: %s %s; retrying in %.0f s", self.id, what, self.config.url, self.backoff)
        self.retry_at = time.monotonic() + self.backoff
        self.backoff = min(MAX_BACKOFF_S, self.backoff * 2)

    def _start_of_video(self, capture: cv2.VideoCapture) -> tuple[datetime, TimeSource]:
        """When the clip began: its mtime (written when recording ended) less its duration."""
        try:
            mtime = os.stat(self.config.url).st_mtime
        except OSError:
            return datetime.now(), "clock"
        frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
        duration = frames / fps if frames > 0 and fps > 0 else 0.0
        return datetime.fromtimestamp(mtime - duration), "mtime"

    def poll(self) -> list[Frame]:
        """At most one frame, when the next one is due (video files: as fast as asked)."""
        now = time.monotonic()
        if self.is_file:
            return self._poll_file(now)
        return self._poll_live(now)

    def _poll_file(self, now: float) -> list[Frame]:
        if self.finished or now < self.retry_at:
            return []
        capture = self.capture or self._open()
        if capture is None:
            return []
        native = capture.get(cv2.CAP_PROP_FPS) or self.config.fps
        step = max(1, round(native / self.config.fps))
        while True:  # skip the frames recorded before a restart
            ok, bgr = capture.read()
            if not ok:
                self.finished = True
                return []
            position_ms = capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0
            for _ in range(step - 1):
                capture.grab()
            self.count += 1
            key = f"{self.config.url}#{self.count}"
            if not self.is_done(self.id, key):
                break
        start, source = self.video_start
        stamp = start + timedelta(milliseconds=max(0.0, position_ms))
        return [Frame(self.id, key, stamp, source, rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))]

    def _poll_live(self, now: float) -> list[Frame]:
        if now < self.next_grab:
            return []
        if not self._ready.is_set():
            self._wanted.set()
            if not self._ready.wait(POLL_WAIT_S):
                return []
        if self._latest is None:
            return []
        bgr, taken = self._latest
        self._ready.clear()
        self.next_grab = now + 1.0 / self.config.fps
        self.count += 1
        return [Frame(self.id, f"{self.session}-{self.count}", taken, "clock",
                      rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))]

    def _read_live(self) -> None:
        """Reader thread: grab every frame; decode one when a poll has asked for it."""
        while not self._stop.is_set():
            capture = self.capture
            if capture is None:
                if self._stop.wait(max(0.0, self.retry_at - time.monotonic())):
                    break
                capture = self._open()
                if capture is None:
                    continue
            if not capture.grab():
                capture.release()
                self.capture = None
                self._back_off("lost")
                continue
            self.backoff = self.config.reconnect_seconds
            if self._wanted.is_set():
                ok, bgr = capture.retrieve()
                if ok:
                    self._latest = (bgr, datetime.now())
                    self._wanted.clear()
                    self._ready.set()
        if self.capture is not None:
            self.capture.release()
            self.capture = None

    def retry_later(self, key: str) -> None:
        """A live frame cannot be offered again."""

    def close(self) -> None:
        """Release the camera (a live reader stuck in a dead stream is left to exit as a daemon)."""
        if not self.is_file:
            self._stop.set()
            self._reader.join(timeout=2.0)
        elif self.capture is not None:
            self.capture.release()
            self.capture = None
