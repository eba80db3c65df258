"""Scenario 1: the broker stops for ``outage_s`` while frames keep arriving, then comes back.

Every message the device queued (outbox rows ever created) must reach a persistent subscriber
exactly once by message id, the outbox must drain and the database stay intact.
"""

from __future__ import annotations

import time

import pytest

from .harness import (
    CountingSubscriber,
    EdgeProcess,
    Feeder,
    drain,
    integrity,
    outbox_left,
    real_frames,
    write_edge_config,
)

pytestmark = pytest.mark.reliability


def test_broker_outage_delivers_every_message_once(tmp_path, data, bundle_dir, mosquitto_factory, settings, row):
    with row(f"1 broker outage {settings.outage_s:.0f}s") as r:
        broker = mosquitto_factory(persistence=True)
        subscriber = CountingSubscriber(broker)
        db = tmp_path / "state" / "trapedge.db"
        service = EdgeProcess(write_edge_config(tmp_path, bundle_dir, broker), tmp_path / "service.log").start()
        feeder = Feeder(real_frames(data), tmp_path / "incoming", interval_s=0.5).start()
        try:
            time.sleep(5)
            broker.stop()
            queued_before = outbox_left(db)
            time.sleep(settings.outage_s)
            queued_during = outbox_left(db)
            broker.start()
            time.sleep(3)
            dropped, sent = drain(db, feeder, subscriber, 120, 120, 60)
            time.sleep(1)  # a late redelivery would show as a duplicate
        finally:
            feeder.stop()
            rc = service.stop()
            subscriber.close()
        received, duplicated = subscriber.figures()
        r.figures = {"frames": len(dropped), "sent": sent, "received": received, "lost": sent - received,
                     "duplicated": duplicated, "outbox left": outbox_left(db), "queued in outage": queued_during,
                     "integrity": integrity(db)}
        r.note = f"outbox {queued_before} -> {queued_during} during the outage; exit {rc}"
        assert rc == 0, service.tail()
        assert queued_during > queued_before, "no message was queued while the broker was down"
        assert (sent - received, duplicated, outbox_left(db)) == (0, 0, 0)
        assert integrity(db) == "ok"
