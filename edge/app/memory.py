"""Process-wide memory settings for the appliance (the service and ``trapedge bench`` call them first).

glibc gives each thread that allocates its own malloc arena. The service's threads (the models'
pool, the decode read-ahead, the publisher) each churn tens of MB a frame (ONNX Runtime allocates
every intermediate tensor per run), and every arena keeps its own free pages: measured on the
shared frames, one arena lowers the service's peak RSS by ~12 MB on average at the same CPU time.

Start-up touches more than the frames use. Once the INT8 service has started, 46 MB of its resident
set are clean pages of shared objects (ONNX Runtime's alone 27 MB of its 36 MB file: import, kernel
registration, graph optimisation) and glibc's heap holds what parsing the models freed. The service
hands both back (``release_start_up_memory``), as the kernel would under memory pressure; the frames
read back what they use (~25 MB of files). Measured on the shared frames, AMD EPYC, the service started
by a process that maps nothing of the project (as systemd starts it), before and after: peak RSS two
frames at once 169-171 -> 146-148 MB, one at a time 148 -> 132-133 MB, at the same frames/s.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter
MADV_PAGEOUT = 21  # Linux 5.4+: reclaim these pages now


def one_malloc_arena() -> bool:
    """Make every thread share glibc's main malloc arena (call before threads start); False where
    the C library is not glibc (musl, macOS), where there is nothing to do."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    try:
        return bool(mallopt(M_ARENA_MAX, 1))
    except OSError:  # pragma: no cover - a mallopt that is not glibc's
        log.debug("mallopt(M_ARENA_MAX) refused")
        return False


def release_start_up_memory() -> int:
    """What start-up alone needed, handed back (call once the models are loaded and the service has
    started): glibc's free heap pages and the libraries' clean pages. Returns the bytes of the latter."""
    trim_heap()
    return release_file_pages()


def trim_heap() -> bool:
    """Give the free pages of glibc's heap back to the kernel (``malloc_trim``): loading the models frees
    what parsing and optimising their graphs took, and glibc keeps it otherwise. False without glibc."""
    try:
        return bool(ctypes.CDLL(None).malloc_trim(0))
    except (OSError, AttributeError):
        return False


def release_file_pages(smaps: str = "/proc/self/smaps") -> int:
    """Reclaim the resident pages of this process's read-only file mappings that hold no private copy
    (shared objects' code and constants, read-only model files), and return how many bytes were resident
    in them. Pages a later call needs come back from the file. 0 where there is nothing to do: not Linux,
    a kernel before 5.4 (``madvise`` refuses ``MADV_PAGEOUT``), no glibc."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        with open(smaps, encoding="ascii", errors="replace") as lines:
            mappings = list(_clean_file_mappings(lines))
    except (OSError, AttributeError):
        return 0
    released = 0
    for start, end, resident in mappings:
        if resident and madvise(start, end - start, MADV_PAGEOUT) == 0:
            released += resident
        elif resident and ctypes.get_errno() in (errno.EINVAL, errno.ENOSYS):
            return released  # the kernel has no MADV_PAGEOUT
    return released


def _clean_file_mappings(lines: Iterable[str]) -> Iterator[tuple[int, int, int]]:
    """(start, end, resident bytes) of each mapping in ``/proc/PID/smaps`` text that is a file, not
    writable, and holds no anonymous (copy-on-write) pages, such as relocated constants."""
    mapping: list | None = None  # [start, end, resident bytes, clean]
    for line in lines:
        head = line.split(maxsplit=6)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            if mapping and mapping[3]:
                yield mapping[0], mapping[1], mapping[2]
            start, end = (int(part, 16) for part in head[0].split("-"))
            named_file = len(head) >= 6 and head[5].startswith("/")
            mapping = [start, end, 0, named_file and "w" not in head[1] and "s" not in head[1]]
        elif mapping and head and head[0] == "Rss:":
            mapping[2] = int(head[1]) * 1024
        elif mapping and head and head[0] == "Anonymous:" and head[1] != "0":
            mapping[3] = False
    if mapping and mapping[3]:
        yield mapping[0], mapping[1], mapping[2]
