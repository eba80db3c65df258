"""Folder source: a drop directory (SD-card import, FTP upload from a cellular trap).

Each file is processed exactly once, across restarts: its key is the relative path, size and
mtime, and the appliance's store says which keys are recorded. A file is taken only once it has
been unchanged for ``settle_seconds`` (a file still being copied keeps a fresh mtime). Where the
kernel says when a writer closed a file (Linux inotify: ``IN_CLOSE_WRITE``, or ``IN_MOVED_TO`` for
a file renamed into place), that file is complete at once and the folder is scanned straight away,
so an alert does not wait for the settle time; the settle check stays for everything else (network
mounts, where inotify sees nothing, and other systems). Video clips (``edge.capture.video``) give
their sampled frames, one event per clip. Files that are neither images nor clips are not skipped:
they become failure frames, so nothing goes unnoticed.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from edge.capture.decode import DEFAULT_MAX_SIDE, MAX_FULL_DECODE_PIXELS, read_ahead
from edge.capture.frame import Frame
from edge.capture.sources.base import IsDone
from edge.capture.video import VideoConfig, file_key_of, is_video, read_clip

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
    notify: bool = Field(True, title="Take a file as soon as its writer closes it (Linux inotify); the settle time "
                                     "still applies where no notification comes (network mounts)")
    max_pixels: int = Field(MAX_FULL_DECODE_PIXELS, ge=1_000_000,
                            title="Most pixels a PNG/TIFF/BMP/WebP may decode to (JPEGs decode reduced, any size): "
                                  "~7 bytes a pixel at the peak must fit the unit's MemoryMax beside the models")
    video: VideoConfig | None = Field(None, title="How video clips in this folder are sampled (unset: the top-level "
                                                  "video settings)")


class CloseNotifier:
    """Which files under the watched folders were closed after writing (or renamed into place).

    A thin layer over ``inotify_simple``: one watch per folder (sub-folders are added as the scans
    find them), read without blocking. ``open`` returns None where inotify is not available.
    """

    def __init__(self, inotify: Any, flags: Any) -> None:
        self.inotify, self.flags = inotify, flags
        self.mask = flags.CLOSE_WRITE | flags.MOVED_TO | flags.CREATE  # CREATE: new sub-folders get watched
        self.folders: dict[int, Path] = {}
        self.watched: set[Path] = set()
        self.closed: set[Path] = set()

    @classmethod
    def open(cls, root: Path) -> CloseNotifier | None:
        try:
            from inotify_simple import INotify, flags
        except (ImportError, OSError):  # not Linux, or the library is missing
            return None
        try:
            notifier = cls(INotify(), flags)
        except OSError as exc:  # e.g. the per-user inotify instance limit
            log.info("%s: no file-close notifications (%s): files settle by time", root, exc)
            return None
        notifier.watch(root)
        return notifier

    def watch(self, folder: Path) -> None:
        """Watch ``folder`` (once; a folder that is gone or not watchable is left to the scans)."""
        if folder in self.watched:
            return
        try:
            self.folders[self.inotify.add_watch(folder, self.mask)] = folder
            self.watched.add(folder)
        except OSError:
            pass

    def drain(self) -> bool:
        """Collect the closes since the last call; True when a scan is due (a file closed or moved in,
        a sub-folder made: the scan watches it; files already in it when watched settle by time)."""
        try:
            events = self.inotify.read(timeout=0)
        except OSError:
            return False
        due = False
        for event in events:
            folder = self.folders.get(event.wd)
            if folder is None or not event.name:
                continue
            if event.mask & self.flags.ISDIR:
                due = due or bool(event.mask & (self.flags.CREATE | self.flags.MOVED_TO))
            elif event.mask & (self.flags.CLOSE_WRITE | self.flags.MOVED_TO):
                self.closed.add(folder / event.name)
                due = True
        return due

    def complete(self, path: Path) -> bool:
        """Whether ``path`` was closed after writing since it was last taken."""
        return path in self.closed

    def taken(self, path: Path) -> None:
        self.closed.discard(path)

    def fileno(self) -> int:
        """The inotify descriptor: readable while notifications wait to be drained."""
        return self.inotify.fileno()

    def close(self) -> None:
        self.inotify.close()


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
        self.notifier = CloseNotifier.open(self.root) if config.notify else None
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
                            if self.notifier is not None:
                                self.notifier.watch(Path(entry.path))
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

    def _settled(self, key: str, stat: os.stat_result, now: float, path: Path | None = None) -> bool:
        """Closed by its writer (inotify), or unchanged for ``settle_seconds``: by its mtime age, or by
        how long the scans have seen the same size and mtime. The last matters when the mtime lies in
        the future (a camera clock set ahead, a FAT card whose local times are read as UTC): such
        files would otherwise wait until the clock caught up."""
        if path is not None and self.notifier is not None and self.notifier.complete(path):
            return True
        if time.time() - stat.st_mtime >= self.config.settle_seconds:
            return True
        return now - self.unchanged_since.setdefault(key, now) >= self.config.settle_seconds

    def _new_files(self) -> list[tuple[Path, str]]:
        """Settled files not yet recorded nor handed out (at most ``batch``), oldest first."""
        now = time.monotonic()
        if self.notifier is not None and self.notifier.drain():
            self.next_scan = 0.0  # a file was closed: scan now, not at the next poll
        if now < self.next_scan:
            return []
        self.next_scan = now + self.config.poll_seconds
        todo = []
        scan = [(path, self.key_of(path, stat), stat) for _, _, path, stat in self._scan()]
        present = {key for _, key, _ in scan}
        self.unchanged_since = {k: t for k, t in self.unchanged_since.items() if k in present}
        if self.notifier is not None:  # closes of files since gone (renamed .part files, deleted ones)
            self.notifier.closed &= {path for path, _, _ in scan}
        for path, key, stat in scan:
            if key in self.seen or not self._settled(key, stat, now, path):
                continue
            self.unchanged_since.pop(key, None)
            if self.notifier is not None:
                self.notifier.taken(path)
            self.seen.add(key)
            if not self.is_done(self.id, key):
                log.debug("%s: taking %s", self.id, key)  # trapedge bench --latency reads this line
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
        """Images decoded one ahead in the worker thread; a clip's sampled frames read here, one at a time.
        A file not wholly handed out (a clip cut short) is offered again; its recorded frames are skipped."""
        given = 0  # files of ``todo`` whose every frame was handed out
        try:
            for clips, run in itertools.groupby(todo, key=lambda item: is_video(item[0])):
                files = list(run)
                if clips:
                    for path, key in files:
                        yield from read_clip(path, self.id, key, self.config.video or VideoConfig(), self.is_done,
                                             follow_symlinks=False)
                        given += 1
                    continue
                for frame in read_ahead(self.pool, ((path, self.id, key) for path, key in files), self.config.max_side,
                                        self.config.prefetch, follow_symlinks=False,
                                        max_pixels=self.config.max_pixels):
                    given += 1
                    yield frame
        finally:
            for _, key in todo[given:]:
                self.seen.discard(key)

    def wake_fd(self) -> int | None:
        """Readable as soon as a file under the folder is closed or moved in (until ``poll`` drains the
        notifications), so the service wakes for it at once; None without notifications."""
        return self.notifier.fileno() if self.notifier is not None else None

    def settling(self) -> int:
        """Files seen but not yet unchanged for ``settle_seconds`` (still being written, or just arrived)."""
        return len(self.unchanged_since)

    def retry_later(self, key: str) -> None:
        """Offer a file again at the next scan (it was handed out but could not be recorded; for a clip's
        frame, the clip: its recorded frames are skipped)."""
        self.seen.discard(file_key_of(key))

    def close(self) -> None:
        """Stop the decoding thread and the notifications."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.notifier is not None:
            self.notifier.close()
            self.notifier = None
