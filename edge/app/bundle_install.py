"""Installed model bundles: staging, verification, smoke inference, atomic switch and rollback.

Layout under a bundles root (default ``/var/lib/trapedge/bundles``)::

    versions/<name>-<version>/   one directory per installed bundle
    current  -> versions/...     what the service loads (``bundle.path``)
    previous -> versions/...     what ``rollback`` (or the service itself) goes back to

``current`` and ``previous`` are relative symlinks, replaced with ``os.replace`` of a fresh temp
link, so a reader sees the old bundle or the new one, never none.

A bundle is copied (never following a link) or unpacked into a hidden ``versions/.staging-*``,
where its signature, files and models are checked; only then is it renamed into ``versions/``
and switched to. An install killed on the way leaves a hidden leftover (removed by the next
install) or a verified version that neither link names (replaced when it is installed again).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import stat
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from edge.analysis.analyzer import Analyzer, FrameAnalysis
from edge.app.config import EdgeConfig, command_defaults
from edge.app.factory import build_analyzer
from edge.capture.decode import DEFAULT_MAX_SIDE, ImageDecodeError, decode_image, list_images
from edge.capture.frame import Frame
from edge.runtime.backends import BackendUnavailable
from edge.runtime.bundle import Bundle, BundleError, BundleTrust, load_bundle
from edge.runtime.manifest import MANIFEST_NAME

DEFAULT_ROOT = Path("/var/lib/trapedge/bundles")
SMOKE_FRAMES = 3
LEFTOVERS = (".staging-", ".replaced-")  # hidden folders an interrupted install leaves in versions/


class InstallError(RuntimeError):
    """A bundle was refused; the message is one line saying why."""


@dataclass(frozen=True)
class BundleRoot:
    """The directory that holds ``versions/``, ``current`` and ``previous``."""

    path: Path

    @property
    def versions(self) -> Path:
        return self.path / "versions"

    @property
    def current(self) -> Path:
        return self.path / "current"

    @property
    def previous(self) -> Path:
        return self.path / "previous"

    def target(self, link: Path) -> Path | None:
        """The version directory a link points at (None when the link is absent)."""
        return (link.parent / os.readlink(link)).resolve() if link.is_symlink() else None


@dataclass(frozen=True)
class SmokeResult:
    """What the smoke inference saw."""

    frames: int
    boxes: int
    ms_per_frame: float
    crops: int

    def describe(self) -> str:
        if self.frames == 0:
            return "smoke: no frames (allowed with --allow-no-frames): the models were built, not run"
        return (f"smoke: {self.frames} frame(s), {self.boxes} box(es), {self.ms_per_frame:.1f} ms/frame detector; "
                f"classifier + embedder on {self.crops} crop(s): finite")


@dataclass(frozen=True)
class InstallResult:
    """One switch of ``current``."""

    old: str | None
    new: str
    smoke: SmokeResult


# --- switching --------------------------------------------------------------------------------
def point(link: Path, target: Path) -> None:
    """Make ``link`` a relative symlink to ``target`` atomically (temp link + ``os.replace``)."""
    temp = link.with_name(f".{link.name}.{uuid.uuid4().hex[:8]}")
    os.symlink(os.path.relpath(target, link.parent), temp)
    os.replace(temp, link)


def switch(root: BundleRoot, target: Path) -> str | None:
    """``current`` -> ``target``; ``previous`` -> the old current. Returns the old version dir name."""
    old = root.target(root.current)
    if old is not None and old != target.resolve():
        point(root.previous, old)
    point(root.current, target)
    return old.name if old is not None else None


def rollback(root: BundleRoot) -> tuple[str, str]:
    """Swap ``current`` and ``previous``; returns (was current, now current).

    Raises:
        InstallError: when either link is missing.
    """
    current, previous = root.target(root.current), root.target(root.previous)
    if current is None or previous is None:
        raise InstallError(f"nothing to roll back to: {root.path} needs both current and previous")
    point(root.current, previous)
    point(root.previous, current)
    return current.name, previous.name


def self_rollback(path: Path, trust: BundleTrust | None = None) -> tuple[str, str] | None:
    """At service start: if ``path`` is a ``current`` link with a sibling ``previous`` that
    loads (signed by a key of ``trust``), point ``current`` at it. Returns (bad version dir, good
    version dir), or None when there is nothing to go back to."""
    path = Path(path)
    root = BundleRoot(path.parent)
    if path.name != "current" or not path.is_symlink() or not root.previous.is_symlink():
        return None
    bad, good = root.target(root.current), root.target(root.previous)
    if good is None or good == bad:
        return None
    load_bundle(good, trust)  # raises if the previous bundle is bad too
    point(root.current, good)
    return (bad.name if bad else "?"), good.name


def list_versions(root: BundleRoot) -> list[tuple[str, str]]:
    """Installed version dirs, each with its marker (``current``, ``previous`` or ``""``)."""
    if not root.versions.is_dir():
        return []
    current, previous = root.target(root.current), root.target(root.previous)
    rows = []
    for entry in sorted(p for p in root.versions.iterdir() if p.is_dir() and not p.name.startswith(".")):
        marks = [name for name, t in (("current", current), ("previous", previous)) if t == entry.resolve()]
        rows.append((entry.name, ",".join(marks)))
    return rows


# --- staging ----------------------------------------------------------------------------------
@dataclass
class _Budget:
    """How many more bytes a bundle may take (``bundle.install_max_mb``)."""

    limit_mb: float
    used: int = 0

    def take(self, count: int) -> None:
        self.used += count
        if self.used > self.limit_mb * 1e6:
            raise InstallError(f"the bundle is larger than bundle.install_max_mb ({self.limit_mb:g} MB): refused "
                               "(raise the limit in edge.yaml if the bundle is genuine)")


def _copy_file(source: Path, dest: Path, budget: _Budget) -> None:
    """Copy one plain file; a link or a special file swapped in since the folder was listed is refused."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise InstallError(f"{source}: {exc.strerror}: a bundle holds only plain files and folders") from None
    with os.fdopen(fd, "rb") as src, open(dest, "xb") as out:
        if not stat.S_ISREG(os.fstat(src.fileno()).st_mode):
            raise InstallError(f"{source} is not a plain file: a bundle holds only plain files and folders")
        while block := src.read(1 << 20):
            budget.take(len(block))
            out.write(block)


def _copy_plain_tree(source: Path, dest: Path, budget: _Budget) -> None:
    """Copy a bundle folder: plain files and folders only, never following a link, within ``budget``."""
    dest.mkdir()
    with os.scandir(source) as listing:
        entries = sorted(listing, key=lambda entry: entry.name)
    for entry in entries:
        path = Path(entry.path)
        if entry.is_symlink():
            raise InstallError(f"{path} is a symbolic link: a bundle holds only plain files and folders (put the "
                               "file itself in the bundle)")
        if entry.is_dir(follow_symlinks=False):
            _copy_plain_tree(path, dest / entry.name, budget)
        elif entry.is_file(follow_symlinks=False):
            _copy_file(path, dest / entry.name, budget)
        else:
            raise InstallError(f"{path} is a device, pipe or socket: a bundle holds only plain files and folders")


def _checked_member(archive: Path, member: tarfile.TarInfo) -> tarfile.TarInfo:
    """``member`` if it is a plain file or folder inside the bundle, with plain permissions; else refuse."""
    name = Path(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise InstallError(f"{archive.name}: member {member.name!r} escapes the bundle directory")
    if not (member.isfile() or member.isdir()):
        raise InstallError(f"{archive.name}: member {member.name!r} is not a plain file or folder (a link or a "
                           "device): a bundle holds only files and folders")
    member.mode = 0o755 if member.isdir() else 0o644
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _extract(archive: Path, dest: Path, budget: _Budget) -> None:
    """Unpack a .tar/.tar.gz of plain files and folders, refusing members that would land outside ``dest``.

    The checks are ours, so they hold on Pythons without tarfile's extraction filters (before
    3.11.4, e.g. Debian bookworm's 3.11.2); where the ``data`` filter exists it runs as well.
    """
    with tarfile.open(archive) as tar:
        members = [_checked_member(archive, member) for member in tar.getmembers()]
        budget.take(sum(member.size for member in members if member.isfile()))
        if hasattr(tarfile, "data_filter"):
            try:
                tar.extractall(dest, members=members, filter="data")
            except tarfile.FilterError as exc:
                raise InstallError(f"{archive.name}: {exc}") from exc
        else:
            tar.extractall(dest, members=members)  # noqa: S202 - every member checked above


def _bundle_root_in(unpacked: Path) -> Path:
    """The directory holding manifest.json: the unpacked folder or its only sub-folder."""
    if (unpacked / MANIFEST_NAME).is_file():
        return unpacked
    children = [p for p in unpacked.iterdir()]
    if len(children) == 1 and (children[0] / MANIFEST_NAME).is_file():
        return children[0]
    raise InstallError(f"not a model bundle: no {MANIFEST_NAME} at its top (or in its only folder)")


def stage(source: Path, staging: Path, max_mb: float) -> Path:
    """Copy or unpack ``source`` (at most ``max_mb``) into ``staging``; returns the folder holding its manifest."""
    unpacked, budget = staging / "bundle", _Budget(max_mb)
    if source.is_dir():
        _copy_plain_tree(source, unpacked, budget)
    elif source.is_file() and tarfile.is_tarfile(source):
        unpacked.mkdir()
        _extract(source, unpacked, budget)
    else:
        raise InstallError(f"{source} is neither a bundle directory nor a .tar/.tar.gz of one")
    return _bundle_root_in(unpacked)


@contextmanager
def _locked(root: BundleRoot) -> Iterator[None]:
    """One install at a time under a root (``.install.lock`` beside ``current``; it goes with the process)."""
    root.versions.mkdir(parents=True, exist_ok=True)
    with open(root.path / ".install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def remove_leftovers(root: BundleRoot) -> list[str]:
    """Remove the hidden folders an interrupted install left in ``versions/``; returns their names.

    Call it holding the install lock: another install's staging folder is not a leftover.
    """
    found = [p for p in root.versions.iterdir() if p.is_dir() and not p.is_symlink() and p.name.startswith(LEFTOVERS)]
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return [p.name for p in found]


def _version_dir(root: BundleRoot, bundle: Bundle) -> Path:
    """``versions/<name>-<version>`` for a verified bundle; refused while ``current`` or ``previous`` names it."""
    final = root.versions / f"{bundle.manifest.name}-{bundle.manifest.version}"
    for link in (root.current, root.previous):
        if root.target(link) == final.resolve():
            raise InstallError(f"{final.name} is already installed ({link.name}): `trapedge bundle rollback` "
                               "switches between current and previous")
    return final


def _place(staged: Path, final: Path) -> None:
    """Rename the verified ``staged`` folder to ``final``; a folder already there that neither link
    names (an install killed before its switch) is replaced."""
    if final.exists() or final.is_symlink():
        aside = Path(tempfile.mkdtemp(prefix=".replaced-", dir=final.parent))
        final.rename(aside / final.name)
        shutil.rmtree(aside, ignore_errors=True)
    staged.rename(final)


# --- smoke check ------------------------------------------------------------------------------
def store_frames(store: Path, limit: int = 50) -> list[Path]:
    """The most recent frame paths the service recorded that still exist (read-only access)."""
    if not Path(store).is_file():
        return []
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute("SELECT path FROM frames WHERE path IS NOT NULL ORDER BY id DESC LIMIT ?", (limit,))
        return [Path(p) for (p,) in rows if Path(p).is_file()]
    finally:
        conn.close()


def smoke_images(paths: list[Path], count: int = SMOKE_FRAMES) -> list[np.ndarray]:
    """Decode up to ``count`` of ``paths``, skipping ones that do not decode."""
    images = []
    for path in paths:
        try:
            images.append(decode_image(path, DEFAULT_MAX_SIDE).rgb)
        except ImageDecodeError:
            continue
        if len(images) == count:
            break
    return images


def _finite(name: str, array: np.ndarray) -> None:
    if not np.all(np.isfinite(array)):
        raise InstallError(f"smoke check: {name} produced non-finite values")


def _check_analysis(analysis: FrameAnalysis) -> int:
    """Raise on any non-finite output of one analysed frame; returns how many crops were classified."""
    det = analysis.detections
    _finite("detector", np.concatenate([det.xyxy.ravel(), det.confidence]))
    for column in ("species_probs", "embedding", "label_probs"):
        if column in det.data:
            _finite(column, det.data[column])
    return len(det) if "species_probs" in det.data else 0


def _check_crop_models(analyzer: Analyzer, image: np.ndarray) -> int:
    """Run the crop models on the whole frame (when no box gave them a crop); returns 1."""
    for name, model in (("classifier", analyzer.classifier), ("embedder", analyzer.embedder)):
        if model is not None:
            _finite(name, model.run_crops([model.whole(image)]))
    return 1


def smoke_check(analyzer: Analyzer, images: list[np.ndarray]) -> SmokeResult:
    """Run the analyzer a command or the service built on real frames: every output must be finite.

    The detector's raw output is checked on the first frame; when no frame had a box, the crop
    models run on the first whole frame, so every model of the bundle ran.

    Raises:
        InstallError: when a model does not run or yields NaN/inf.
    """
    try:
        crops, boxes, started = 0, 0, time.perf_counter()
        for i, image in enumerate(images):
            analysis = analyzer.analyse(Frame(f"smoke-{i}", "smoke", datetime.now(), "clock", rgb=image))
            crops += _check_analysis(analysis)
            boxes += len(analysis.detections)
        elapsed = (time.perf_counter() - started) * 1000
        for image in images[:1]:
            _finite("detector raw output", analyzer.detector.raw_batch([image])[0])
            crops = crops or _check_crop_models(analyzer, image)
    except InstallError:
        raise
    except Exception as exc:  # a model that does not build or run: the reason, on one line
        raise InstallError(f"smoke check: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    return SmokeResult(len(images), boxes, elapsed / max(len(images), 1), crops)


# --- install ----------------------------------------------------------------------------------
def _verify(staged: Path, config: EdgeConfig, root: BundleRoot) -> tuple[Path, Analyzer]:
    """Signature and files of the staged copy, its version directory, its models built."""
    try:
        bundle = load_bundle(staged, config.bundle.trust)
        final = _version_dir(root, bundle)
        return final, build_analyzer(config, bundle)
    except (BundleError, BackendUnavailable) as exc:
        raise InstallError(str(exc)) from exc


def install(root: BundleRoot, source: Path, frames: list[Path], config: EdgeConfig | None = None, *,
            allow_no_frames: bool = False) -> InstallResult:
    """Stage, verify (signature against ``config``'s trusted keys, every sha256), smoke-check (the
    analyzer ``config`` describes), then move into ``versions/`` and switch ``current`` to one bundle.

    Any failure before the switch removes the staged copy and leaves ``current`` untouched.

    Raises:
        InstallError: naming the reason in one line.
    """
    config = config or command_defaults()
    images = smoke_images(frames)
    if not images and not allow_no_frames:
        raise InstallError("no frames for the smoke check (give --frames DIR or --store DB with recorded "
                           "frames, or --allow-no-frames to install without running the models)")
    with _locked(root):
        remove_leftovers(root)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root.versions))
        try:
            staged = stage(Path(source), staging, config.bundle.install_max_mb)
            final, analyzer = _verify(staged, config, root)
            smoke = smoke_check(analyzer, images)
            _place(staged, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        old = switch(root, final)
    return InstallResult(old, final.name, smoke)


def frames_from(directory: Path | None, store: Path | None) -> list[Path]:
    """Smoke frames: the images under ``directory``, else the store's most recent ones."""
    if directory is not None:
        return list_images(directory)
    return store_frames(store) if store is not None else []
