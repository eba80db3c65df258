"""Scenario 5: every kind of bad or unusual image dropped into a running service.

Each file must become exactly one frame or failure record (as ``bad_images.EXPECTED`` says),
and the service must stay up and stop cleanly.
"""

from __future__ import annotations

import time

import pytest

from .bad_images import write_bad_images
from .harness import EdgeProcess, integrity, query, wait_for, write_edge_config

pytestmark = pytest.mark.reliability


def test_bad_images_are_records_and_the_service_stays_up(tmp_path, data, bundle_dir, row):
    with row("5 bad images") as r:
        db = tmp_path / "state" / "trapedge.db"
        # one scene in every file: without motion the gate would rightly skip all but the first
        service = EdgeProcess(write_edge_config(tmp_path, bundle_dir, None, gate={"enabled": False}),
                              tmp_path / "service.log").start()
        staging = tmp_path / "staging"
        expected = write_bad_images(data / "frames" / "autofocus_gallery" / "coyote1.jpg", staging)
        try:
            wait_for(lambda: db.exists(), 60, "the store")
            for name in expected:
                (staging / name).rename(tmp_path / "incoming" / name)
            wait_for(lambda: len(_records(db)) >= len(expected), 120, "a record of every file")
            time.sleep(1)
            alive = service.alive
        finally:
            rc = service.stop()
        records = _records(db)
        per_file = {name: [kind for n, kind in records if n == name] for name in expected}
        wrong = {n: k for n, k in per_file.items() if len(k) != 1 or (expected[n] and k[0] != expected[n])}
        r.figures = {"kinds": len(expected), "recorded ok": sum(1 for _, k in records if k == "frame"),
                     "failure records": sum(1 for _, k in records if k == "failure"),
                     "service alive": "yes" if alive else "no", "integrity": integrity(db)}
        r.note = "; ".join(f"{n}: {k}" for n, k in wrong.items()) or f"exit {rc}"
        assert alive and rc == 0, service.tail()
        assert not wrong
        assert integrity(db) == "ok"


def _records(db) -> list[tuple[str, str]]:
    rows = [(p, "frame") for (p,) in query(db, "SELECT path FROM frames")]
    rows += [(p, "failure") for (p,) in query(db, "SELECT path FROM failures")]
    return [(p.rsplit("/", 1)[-1], kind) for p, kind in rows]
