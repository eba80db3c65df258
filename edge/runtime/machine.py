"""What this machine offers the models (cores, memory) and the frames at once it runs by default.

Imports nothing but the standard library, so that a process that only measures or launches the
service (``trapedge bench``) can ask without loading ONNX Runtime: a parent that maps ONNX Runtime's
library keeps its pages in the page cache, and the service it starts then counts them in its own
resident set.
"""

from __future__ import annotations

import os

# frames_at_once: 0. On 2 x86 cores (INT8, `trapedge bench`, two runs) two frames at once with one thread
# each ran 29.9-30.9 / 27.6-28.3 frames/s (shared / many-animal frames) against 22.2-23.0 / 19.3-20.4 for
# one frame on two threads, at 9-12 % less CPU a frame: ONNX Runtime's INT8 kernels keep ~1.4 of 2 cores
# busy, and a frame's small steps one. A third frame gained 4 % more; each frame in flight holds 20-30 MB
# of its own (tensors, input, pixels), hence the memory floor (a Pi Zero 2 W has 512 MB in all).
AUTO_FRAMES = 2
AUTO_MIN_MEMORY_MB = 1024


def cores() -> int:
    """The cores this process may run on (its CPU affinity: a systemd CPUAffinity= or a container's
    cpuset, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def memory_mb() -> float:
    """The machine's memory in MB (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 0.0


def auto_frames_at_once(concurrent: bool = True) -> int:
    """``bundle.frames_at_once: 0`` here: ``AUTO_FRAMES`` with that many cores and ``AUTO_MIN_MEMORY_MB`` of
    memory, for a backend whose sessions run several frames at once (``concurrent``); else 1."""
    return AUTO_FRAMES if concurrent and cores() >= AUTO_FRAMES and memory_mb() >= AUTO_MIN_MEMORY_MB else 1
