"""Scenario 2: ``kill -9`` of the edge service at random moments while frames arrive.

It is restarted at once each time, as systemd's ``Restart=always`` would. At the end every
dropped frame is recorded exactly once, the only failure row is the one bad input, the database
is intact and no message is lost (QoS 1 may redeliver after a kill: duplicates are reported).
"""

from __future__ import annotations

import random

import pytest

from .harness import (
    CountingSubscriber,
    EdgeProcess,
    Feeder,
    drain,
    frame_figures,
    integrity,
    outbox_left,
    random_pause,
    real_frames,
    write_edge_config,
)

pytestmark = pytest.mark.reliability


def test_random_kill_9_loses_and_repeats_nothing(tmp_path, data, bundle_dir, mosquitto, settings, row):
    with row(f"2 kill -9 x{settings.kills}") as r:
        rng = random.Random(settings.seed)
        subscriber = CountingSubscriber(mosquitto)
        db = tmp_path / "state" / "trapedge.db"
        service = EdgeProcess(write_edge_config(tmp_path, bundle_dir, mosquitto), tmp_path / "service.log").start()
        feeder = Feeder(real_frames(data), tmp_path / "incoming", interval_s=0.3)
        (tmp_path / "incoming" / "empty.jpg").write_bytes(b"")  # the one bad input
        feeder.start()
        pauses = []
        try:
            for _ in range(settings.kills):
                pauses.append(random_pause(rng, 0.5, 4.0))  # model loading, mid-frame, mid-publish, idle
                service.kill()
                service.start()
            dropped, sent = drain(db, feeder, subscriber, 180, 120, 60)
        finally:
            feeder.stop()
            rc = service.stop()
            subscriber.close()
        figures = frame_figures(db, dropped)
        received, duplicated = subscriber.figures()
        r.figures = {"frames dropped": figures["dropped"], "recorded": figures["recorded"], "twice": figures["twice"],
                     "failure rows": figures["failures"], "restarts": service.starts - 1, "sent": sent,
                     "received": received, "lost": sent - received, "duplicated": duplicated,
                     "integrity": integrity(db)}
        r.note = f"kills after {', '.join(f'{p:.1f}' for p in pauses)} s; exit {rc}"
        assert rc == 0, service.tail()
        assert figures["recorded"] == len(dropped) and figures["twice"] == 0
        assert figures["failures"] == 1  # empty.jpg and nothing else
        assert integrity(db) == "ok"
        assert sent - received == 0 and outbox_left(db) == 0
