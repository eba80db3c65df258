"""Video clips (AVI, MP4...) from trail cameras: frames sampled at a set rate, or a clear failure.

A clip is decoded with OpenCV (``cv2.VideoCapture``, its FFmpeg back-end), read forward once:
``video.sample_fps`` frames per second of video, at most ``video.max_frames_per_clip`` of them (a
longer clip is sampled more sparsely, so the samples still span all of it). Frame numbers are
indices in decode order from 0, as MegaDetector's video fields count them. cv2 is imported inside
the functions that decode, so the service imports it only once a clip arrives.

A clip's frames carry keys ``<clip key>#<frame number>``, except the last sampled frame, which
carries the clip's own key: recording it is what marks the clip done (a folder source's
exactly-once check), and a clip cut short by a restart is read again, skipping the frames already
recorded. Every frame of a clip is one event (``edge.events.bursts``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from common.files import files_under
from edge.capture.decode import ImageDecodeError, _open_file, file_time
from edge.capture.frame import Frame, TimeSource

VIDEO_SUFFIXES = {".avi", ".mp4", ".mov", ".m4v", ".mkv", ".mpg", ".mpeg", ".3gp", ".wmv"}
_PROC_FD = Path("/proc/self/fd")


class VideoConfig(BaseModel):
    """How video clips are sampled."""

    model_config = ConfigDict(extra="forbid")
    sample_fps: float = Field(1.0, gt=0, le=30, title="Frames taken per second of video")
    max_frames_per_clip: int = Field(60, ge=1, le=10_000,
                                     title="Most frames taken from one clip (a longer clip is sampled more sparsely)")


class VideoDecodeError(Exception):
    """The file is not a usable video; the message says why in a few words."""


def is_video(path: str | Path) -> bool:
    """Whether ``path`` has a video suffix (decoded as a clip, not as an image)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def list_videos(root: str | Path) -> list[Path]:
    """Every file under ``root`` with a video suffix, sorted (recursive)."""
    return [p for p in files_under(root) if is_video(p)]


def sample_step(frame_rate: float, frame_count: int, config: VideoConfig) -> int:
    """Take every n-th frame: ``sample_fps`` of ``frame_rate``, or sparser when the clip's
    ``frame_count`` (0: unknown) would give more than ``max_frames_per_clip`` samples."""
    step = max(1, round(frame_rate / config.sample_fps))
    if frame_count > 0:
        step = max(step, math.ceil(frame_count / config.max_frames_per_clip))
    return step


def file_key_of(frame_key: str) -> str:
    """The key of the file a frame came from: a clip frame's key less its ``#<frame number>``."""
    head, sep, tail = frame_key.rpartition("#")
    return head if sep and tail.isdigit() else frame_key


def clip_of(frame: Frame) -> str | None:
    """The clip ``frame`` was sampled from (its file key, the same for every frame of it), or None for
    a frame that is not from a video file (a still, a camera)."""
    if frame.path is None or not is_video(frame.path):
        return None
    return file_key_of(frame.key)


class Clip:
    """An open video file, read forward once. Use ``Clip.open`` as a context manager."""

    def __init__(self, path: Path, capture: Any, frame_rate: float, frame_count: int):
        self.path, self.capture = path, capture
        self.frame_rate, self.frame_count = frame_rate, frame_count
        self.start: tuple[datetime, TimeSource] = self._start_time()

    @classmethod
    def open(cls, path: str | Path, follow_symlinks: bool = True) -> Clip:
        """Open ``path`` (refused when missing, empty or, with ``follow_symlinks`` False, a link).

        Raises:
            VideoDecodeError: the file cannot be opened as a video, or it has no frame rate.
        """
        try:
            import cv2
        except ImportError as exc:  # the device image lacks it: each clip says so, stills go on
            raise VideoDecodeError(f"OpenCV does not import ({exc}): video clips cannot be decoded here; "
                                   "pip install opencv-python-headless") from exc
        path = Path(path)
        try:
            handle = _open_file(path, follow_symlinks)
        except ImageDecodeError as exc:
            raise VideoDecodeError(str(exc)) from exc
        with handle:  # FFmpeg reads the file opened here (no link followed), through /proc where there is one
            fd_path = _PROC_FD / str(handle.fileno())
            capture = cv2.VideoCapture(str(fd_path if fd_path.exists() else path))
        if not capture.isOpened():
            capture.release()
            raise VideoDecodeError("not a readable video (truncated, corrupt, or a codec FFmpeg lacks)")
        frame_rate = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not math.isfinite(frame_rate) or frame_rate <= 0:
            capture.release()
            raise VideoDecodeError("no frame rate in the video's header: its frames cannot be placed in time")
        count = capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0
        return cls(path, capture, frame_rate, int(count) if math.isfinite(count) and count > 0 else 0)

    def _start_time(self) -> tuple[datetime, TimeSource]:
        """When recording began: the file's mtime (written when it ended) less the clip's length; the clock
        when the file is gone."""
        end, source = file_time(self.path)
        return end - timedelta(seconds=self.frame_count / self.frame_rate), source

    def sample(self, config: VideoConfig) -> Iterator[tuple[int, np.ndarray]]:
        """(frame number, (H, W, 3) uint8 RGB) of each sampled frame, in order.

        Raises:
            VideoDecodeError: not one frame decodes.
        """
        import cv2

        step, number, taken = sample_step(self.frame_rate, self.frame_count, config), 0, 0
        while taken < config.max_frames_per_clip:
            try:
                ok, bgr = self.capture.read()
            except cv2.error:  # a corrupt packet mid-clip ends the clip where it broke
                ok, bgr = False, None
            if not ok or bgr is None:
                break
            yield number, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            taken += 1
            for _ in range(step - 1):  # grab: demux and decode, no colour conversion
                if not self.capture.grab():
                    return
            number += step
        if taken == 0:
            raise VideoDecodeError("no frame decodes (truncated or corrupt video)")

    def frame(self, number: int, rgb: np.ndarray, source_id: str, key: str) -> Frame:
        """Frame ``number`` as a ``Frame``, timed from the clip's start."""
        start, source = self.start
        return Frame(source_id, key, start + timedelta(seconds=number / self.frame_rate), source, rgb=rgb,
                     path=self.path)

    def close(self) -> None:
        self.capture.release()

    def __enter__(self) -> Clip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_clip(path: str | Path, source_id: str, key: str, config: VideoConfig,
              is_done: Callable[[str, str], bool] | None = None, follow_symlinks: bool = True) -> Iterator[Frame]:
    """A clip's sampled frames as ``Frame``s, or one failure ``Frame`` (key ``key``) when it does not
    decode: never an exception. Frames ``is_done`` says were recorded are skipped; the last sampled
    frame carries ``key`` itself (see the module's docstring), so it is read one frame ahead.
    """
    path = Path(path)
    try:
        with Clip.open(path, follow_symlinks) as clip:
            pending: tuple[int, np.ndarray] | None = None
            for sampled in clip.sample(config):
                if pending is not None and not _done(is_done, source_id, f"{key}#{pending[0]}"):
                    yield clip.frame(*pending, source_id, f"{key}#{pending[0]}")
                pending = sampled
            if pending is not None:
                yield clip.frame(*pending, source_id, key)
    except (VideoDecodeError, OSError) as exc:
        yield Frame(source_id, key, *file_time(path), path=path, failure=str(exc) or type(exc).__name__)


def _done(is_done: Callable[[str, str], bool] | None, source_id: str, key: str) -> bool:
    return is_done is not None and is_done(source_id, key)

