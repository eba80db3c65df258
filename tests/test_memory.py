"""Process-wide memory settings (edge/app/memory.py): what the service hands back once it has started."""

import json
import subprocess
import sys

import pytest

from edge.app.memory import _clean_file_mappings

SMAPS = """\
7f0000000000-7f0000400000 r-xp 00000000 08:01 101 /usr/lib/libonnxruntime.so
Rss:                2048 kB
Anonymous:             0 kB
7f0000400000-7f0000500000 r--p 00400000 08:01 101 /usr/lib/libonnxruntime.so
Rss:                 512 kB
Anonymous:            64 kB
7f0000500000-7f0000600000 rw-p 00500000 08:01 101 /usr/lib/libonnxruntime.so
Rss:                 256 kB
Anonymous:           256 kB
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
Rss:                1024 kB
Anonymous:          1024 kB
7f0000700000-7f0000800000 rw-s 00000000 08:01 102 /var/lib/trapedge/trapedge.db-shm
Rss:                  32 kB
Anonymous:             0 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Rss:                  16 kB
Anonymous:            16 kB
7f0000900000-7f0000a00000 r--p 00000000 08:01 103 /opt/bundle/detector.int8.onnx
Rss:                 128 kB
Anonymous:             0 kB
"""


def test_only_read_only_file_pages_without_private_copies_are_handed_back():
    """Code and read-only files, yes; relocated constants (copy-on-write pages), data, the heap, shared
    writable files (SQLite's shared memory) and the stack, never: nothing the process wrote is dropped."""
    mappings = list(_clean_file_mappings(SMAPS.splitlines(keepends=True)))
    assert mappings == [(0x7F0000000000, 0x7F0000400000, 2048 * 1024), (0x7F0000900000, 0x7F0000A00000, 128 * 1024)]


_PROBE = """
import hashlib, json, mmap, sys, tempfile
from pathlib import Path
import numpy as np
import onnxruntime as ort
from edge.app.memory import release_file_pages

def file_mb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssFile:"))
    return int(line.split()[1]) / 1024

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
pixels = np.full((1, 3, 480, 640), 114, np.uint8)
expected = session.run(None, {session.get_inputs()[0].name: pixels})[0]
# a read-only file of this process alone (ONNX Runtime's library is mapped by the test process as well,
# and pages another process maps are left to it)
with tempfile.TemporaryFile() as f:
    f.write(np.random.default_rng(0).integers(0, 255, 32 * 2**20, dtype=np.uint8).tobytes())
    f.flush()
    view = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    digest = hashlib.sha256(view).hexdigest()  # every page read, so resident
    before = file_mb()
    released = release_file_pages() / 2**20
    after = file_mb()
    again = session.run(None, {session.get_inputs()[0].name: pixels})[0]
    print(json.dumps({"before": before, "released": released, "after": after,
                      "same_output": bool(np.array_equal(expected, again)),
                      "same_file": hashlib.sha256(view).hexdigest() == digest}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_read_only_file_pages_are_handed_back_and_read_again_when_used(bundle_dir):
    """A fresh process that ran the INT8 detector and read a 32 MB file through a private read-only mapping:
    the file's pages leave it when handed back (as do start-up's library pages that no other process maps:
    ONNX Runtime's 20-27 MB here), and the detector's next run and the file's next read, which bring back
    what they need, give the same output and bytes."""
    run = subprocess.run([sys.executable, "-c", _PROBE, str(bundle_dir / "detector.int8.onnx")],
                         capture_output=True, text=True, timeout=120, check=True)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["released"] >= 32, figures
    assert figures["after"] <= figures["before"] - 30, figures
    assert figures["same_output"] and figures["same_file"], figures


_HEAP_PROBE = """
import json
from pathlib import Path
from edge.app.memory import one_malloc_arena, trim_heap

def anon_mb():
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("RssAnon:"))
    return int(line.split()[1]) / 1024

one_malloc_arena()
blocks = [bytearray(60_000) for _ in range(2000)]  # under glibc's mmap threshold: on the heap
del blocks[::2]  # every other one freed: holes glibc keeps, the top of the heap still in use
before = anon_mb()
trimmed = trim_heap()
print(json.dumps({"before": before, "after": anon_mb(), "trimmed": trimmed}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc/self/status")
def test_the_heap_s_free_pages_go_back_to_the_kernel():
    """Loading the models frees what parsing their graphs took, and glibc keeps freed pages inside its
    heap: 60 MB of holes between live blocks leave the process once the heap is trimmed."""
    run = subprocess.run([sys.executable, "-c", _HEAP_PROBE], capture_output=True, text=True, timeout=60, check=True)
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["trimmed"] and figures["after"] <= figures["before"] - 40, figures
