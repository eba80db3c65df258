"""Device health: free disk, temperature, and the disk-full policy that pauses frame intake.

When free space on the store's filesystem falls below ``disk.min_free_mb`` the service stops
taking frames from its sources (files stay in the drop folder, not marked done) while the
publisher keeps draining the outbox; once ``min_free_mb + resume_margin_mb`` is free again it
takes the waiting frames, each once.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger("trapedge.health")
THERMAL_ROOT = Path("/sys/class/thermal")


class DiskConfig(BaseModel):
    """When a filling disk pauses frame intake."""

    model_config = ConfigDict(extra="forbid")
    min_free_mb: float = Field(200, ge=0, title="Stop taking frames below this much free space on the store's disk")
    resume_margin_mb: float = Field(20, ge=0, title="Resume once min_free_mb plus this much is free again")


class DiskUsage(NamedTuple):
    """What ``shutil.disk_usage`` returns (bytes)."""

    total: int
    used: int
    free: int


DiskUsageFn = Callable[[Path], DiskUsage]


def _disk_usage(path: Path) -> DiskUsage:
    total, used, free = shutil.disk_usage(path)
    return DiskUsage(total, used, free)


def existing_parent(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the store file may not exist yet)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_free_mb(path: Path, usage: DiskUsageFn = _disk_usage) -> float:
    """Free megabytes (1e6 bytes) on the filesystem holding ``path``."""
    return usage(existing_parent(path)).free / 1e6


def temperature_c(root: Path = THERMAL_ROOT) -> float | None:
    """Highest reading of ``root/thermal_zone*/temp`` (millidegrees) in °C; None when there is none."""
    readings = []
    for zone in sorted(Path(root).glob("thermal_zone*/temp")):
        try:
            readings.append(int(zone.read_text().strip()) / 1000)
        except (OSError, ValueError):
            continue  # a zone that cannot be read (sensor asleep, permission) is not a reading
    return round(max(readings), 1) if readings else None


def disk_full(free_mb: float, config: DiskConfig, was_full: bool) -> bool:
    """The policy: full below ``min_free_mb``; once full, until ``min_free_mb + resume_margin_mb``."""
    limit = config.min_free_mb + (config.resume_margin_mb if was_full else 0)
    return free_mb < limit


class DiskGuard:
    """Tracks free space on the store's filesystem and says whether frames may be taken."""

    def __init__(self, path: Path, config: DiskConfig, usage: DiskUsageFn = _disk_usage):
        self.path, self.config, self.usage = Path(path), config, usage
        self.full = False
        self.free_mb: float | None = None
        self.write_failed_until = 0.0  # monotonic: a write failed for want of space; full at least till then

    def write_failed(self, reason: str, hold_s: float = 30.0) -> None:
        """A database write failed for want of space (the filesystem filled faster than the checks,
        or another process filled it): full now, whatever free space says, for ``hold_s`` at least."""
        self.write_failed_until = time.monotonic() + hold_s
        if not self.full:
            self.full = True
            log.warning("disk full: a database write failed (%s): not taking frames; outbox keeps draining", reason)

    def check(self) -> bool:
        """Measure now; returns True when the state changed (logged once per change)."""
        self.free_mb = disk_free_mb(self.path, self.usage)
        full = disk_full(self.free_mb, self.config, self.full) or time.monotonic() < self.write_failed_until
        if full == self.full:
            return False
        self.full = full
        if full:
            log.warning("disk full: %.0f MB free on %s (< %.0f MB): not taking frames; outbox keeps draining",
                        self.free_mb, existing_parent(self.path), self.config.min_free_mb)
        else:
            log.warning("disk space back: %.0f MB free: taking frames again", self.free_mb)
        return True

    @property
    def accepting(self) -> bool:
        return not self.full

    def figures(self) -> dict:
        """``disk_free_mb``, ``disk_full`` and ``accepting_frames`` for status messages."""
        free = self.free_mb if self.free_mb is not None else disk_free_mb(self.path, self.usage)
        return {"disk_free_mb": round(free, 1), "disk_full": self.full, "accepting_frames": self.accepting}
