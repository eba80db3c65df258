"""Raspberry Pi camera source through picamera2.

picamera2 needs libcamera, which exists only on Raspberry Pi OS; elsewhere this plugin reports
itself unavailable and the rest of the appliance runs. Not run on the development machines.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.capture.frame import Frame
from edge.capture.sources.base import IsDone

KEY = "picamera2"

try:
    from picamera2 import Picamera2

    UNAVAILABLE_REASON = ""
except Exception as exc:  # ImportError, or libcamera failing to load
    Picamera2 = None
    UNAVAILABLE_REASON = f"picamera2 does not import ({exc}); it needs Raspberry Pi OS with libcamera"


class Config(BaseModel):
    """A Raspberry Pi camera module."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["picamera2"] = "picamera2"
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", title="Source id")
    camera: int = Field(0, ge=0, title="Camera number")
    size: tuple[int, int] = Field((2028, 1520), title="Capture width and height")
    fps: float = Field(1.0, gt=0, title="Frames taken per second")


class Source:
    """Still-quality frames from the main stream at ``fps``."""

    def __init__(self, config: Config, is_done: IsDone):
        self.id, self.config = config.id, config
        self.camera = Picamera2(config.camera)
        self.camera.configure(self.camera.create_still_configuration(main={"size": tuple(config.size), "format": "RGB888"}))
        self.camera.start()
        self.session = datetime.now().strftime("%Y%m%dT%H%M%S")
        self.count, self.next_grab = 0, 0.0

    def poll(self) -> list[Frame]:
        """One frame when due."""
        now = time.monotonic()
        if now < self.next_grab:
            return []
        self.next_grab = now + 1.0 / self.config.fps
        # picamera2's "RGB888" is BGR in memory order: reverse to RGB
        rgb = self.camera.capture_array("main")[..., ::-1].copy()
        self.count += 1
        return [Frame(self.id, f"{self.session}-{self.count}", datetime.now(), "clock", rgb=rgb)]

    def retry_later(self, key: str) -> None:
        """A live frame cannot be offered again."""

    def close(self) -> None:
        """Stop the camera."""
        self.camera.stop()
        self.camera.close()
