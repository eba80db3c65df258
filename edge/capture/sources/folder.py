"""Folder source: a drop directory (SD-card import, FTP upload from a cellular trap).

Each file is processed exactly once, across restarts: its key is the relative path, size and
mtime, and the appliance's store says which keys are recorded. A file is taken only once it has
been unchanged for ``settle_seconds`` (a file still being copied keeps a fresh mtime). Files
that are not images are not skipped: they become failure frames, so nothing goes unnoticed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.capture.decode import DEFAULT_MAX_SIDE, MAX_FULL_DECODE_PIXELS, read_ahead
from edge.capture.frame import Frame
from edge.capture.sources.base import IsDone

log = logging.getLogger(__name__)

KEY = "folder"
UNAVAILABLE_REASON = ""
IGNORED_SUFFIXES = {".part", ".tmp", ".crdownload", ".partial"}


class Config(BaseModel):
    """A watched folder."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["folder"] = "folder"
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", title="Source id")
    path: Path = Field(title="Folder to watch")
    recursive: bool = Field(True, title="Include sub-folders")
    settle_seconds: float = Field(2.0, ge=0, title="A file must be unchanged this long before it is read")
    poll_seconds: float = Field(1.0, gt=0, title="Seconds between scans")
    max_side: int = Field(DEFAULT_MAX_SIDE, ge=64, title="JPEGs are decoded at reduced scale down to this size")
    batch: int = Field(32, ge=1, title="Most files returned by one poll")
    prefetch: int = Field(1, ge=0, title="Files decoded ahead while the models run")
    max_pixels: int = Field(MAX_FULL_DECODE_PIXELS, ge=1_000_000,
                            title="Most pixels a PNG/TIFF/BMP/WebP may decode to (JPEGs decode reduced, any size): "
                                  "~7 bytes a pixel at the peak must fit the unit's MemoryMax beside the models")


def _ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith("~") or Path(name).suffix.lower() in IGNORED_SUFFIXES


class Source:
    """Scans the folder; yields each new, settled file once."""

    def __init__(self, config: Config, is_done: IsDone):
        self.id, self.config, self.is_done = config.id, config, is_done
        self.root = Path(config.path)
        self.seen: set[str] = set()
        self.links_refused: set[str] = set()
        self.unchanged_since: dict[str, float] = {}  # key -> when a scan first saw that size and mtime
        self.next_scan = 0.0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix=f"decode-{self.id}")

    def _scan(self) -> list[tuple[float, str, Path, os.stat_result]]:
        found = []
        stack = [self.root]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                if _ignored(entry.name):
                    continue
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if self.config.recursive:
                            stack.append(Path(entry.path))
                    elif entry.is_symlink():
                        self._refuse_link(entry.path)
                    elif entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                        found.append((stat.st_mtime, entry.name, Path(entry.path), stat))
                except FileNotFoundError:
                    continue
        return sorted(found, key=lambda item: (item[0], item[1]))

    def _refuse_link(self, path: str) -> None:
        """A symbolic link is never followed out of the folder (it could name any file on the unit);
        said once per link."""
        if path not in self.links_refused:
            self.links_refused.add(path)
            log.warning("%s: skipping symbolic link %s: only files written into the folder are read", self.id, path)

    def key_of(self, path: Path, stat: os.stat_result) -> str:
        """Identity of a file version: relative path, size and mtime."""
        return f"{path.relative_to(self.root).as_posix()}:{stat.st_size}:{stat.st_mtime_ns}"

    def _settled(self, key: str, stat: os.stat_result, now: float) -> bool:
        """Unchanged for ``settle_seconds``: by its mtime age, or by how long the scans have seen
        the same size and mtime. The second matters when the mtime lies in the future (a camera
        clock set ahead, a FAT card whose local times are read as UTC): such files would
        otherwise wait until the clock caught up."""
        if time.time() - stat.st_mtime >= self.config.settle_seconds:
            return True
        return now - self.unchanged_since.setdefault(key, now) >= self.config.settle_seconds

    def _new_files(self) -> list[tuple[Path, str]]:
        """Settled files not yet recorded nor handed out (at most ``batch``), oldest first."""
        now = time.monotonic()
        if now < self.next_scan:
            return []
        self.next_scan = now + self.config.poll_seconds
        todo = []
        scan = [(path, self.key_of(path, stat), stat) for _, _, path, stat in self._scan()]
        present = {key for _, key, _ in scan}
        self.unchanged_since = {k: t for k, t in self.unchanged_since.items() if k in present}
        for path, key, stat in scan:
            if key in self.seen or not self._settled(key, stat, now):
                continue
            self.unchanged_since.pop(key, None)
            self.seen.add(key)
            if not self.is_done(self.id, key):
                todo.append((path, key))
            if len(todo) >= self.config.batch:
                self.next_scan = 0.0
                break
        return todo

    def poll(self) -> Iterator[Frame]:
        """New settled files (chosen now), decoded one file ahead in a worker thread, oldest first.
        Files not handed out because the caller stopped early are offered again at the next scan."""
        return self._decoded(self._new_files())

    def _decoded(self, todo: list[tuple[Path, str]]) -> Iterator[Frame]:
        given = 0
        try:
            for frame in read_ahead(self.pool, ((path, self.id, key) for path, key in todo), self.config.max_side,
                                    self.config.prefetch, follow_symlinks=False, max_pixels=self.config.max_pixels):
                given += 1
                yield frame
        finally:
            for _, key in todo[given:]:
                self.seen.discard(key)

    def settling(self) -> int:
        """Files seen but not yet unchanged for ``settle_seconds`` (still being written, or just arrived)."""
        return len(self.unchanged_since)

    def retry_later(self, key: str) -> None:
        """Offer a file again at the next scan (it was handed out but could not be recorded)."""
        self.seen.discard(key)

    def close(self) -> None:
        """Stop the decoding thread."""
        self.pool.shutdown(wait=True, cancel_futures=True)
