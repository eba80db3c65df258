"""Scenario 4: fuzzed MQTT payloads at the central service.

Every generated payload goes through ``central.service.Ingestor`` in-process (``parse`` and the
store's ingest path) and, where its topic is one central subscribes to, through a real
Mosquitto to a running ``trapedge central`` process. Central must never crash; every payload is
stored once or rejected with a reason; every untouched valid payload is stored. A final valid
canary proves central still ingests after the storm.
"""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
import yaml
from PIL import Image

pytest.importorskip("hypothesis", reason="pip install hypothesis (the dev extra) for the fuzz scenario")
from hypothesis import HealthCheck, Phase, given, seed  # noqa: E402
from hypothesis import settings as hsettings  # noqa: E402

from central.service import Ingestor  # noqa: E402
from central.store import CentralStore  # noqa: E402
from common.wire import KINDS  # noqa: E402
from edge.wire import messages  # noqa: E402

from .fuzz_payloads import DEVICE, PREFIX, Fuzzed, fuzzed, topic_of  # noqa: E402
from .harness import query, scalar, wait_for  # noqa: E402

pytestmark = pytest.mark.reliability
CHUNK = 500


def _thumbnail(data) -> bytes:
    image = Image.open(data / "frames" / "autofocus_gallery" / "coyote1.jpg").convert("RGB")
    image.thumbnail((64, 48))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=70)
    return out.getvalue()


def generate(count: int, thumbnail: bytes, at_seed: int) -> list[Fuzzed]:
    """``count`` examples from the strategies (generation only: nothing here can fail to shrink)."""
    found: list[Fuzzed] = []

    @seed(at_seed)
    @hsettings(max_examples=count, deadline=None, database=None, phases=[Phase.generate],
               suppress_health_check=list(HealthCheck))
    @given(fuzzed(thumbnail))
    def collect(example):
        found.append(example)

    collect()
    return found


def ingest_in_process(store: CentralStore, payloads: list[Fuzzed]) -> tuple[list[str], list[str]]:
    """Outcome per payload (``stored``, ``duplicate``, ``rejected`` or ``crash``), and crash reasons."""
    ingest, outcomes, crashes = Ingestor(store, PREFIX), [], []
    for item in payloads:
        try:
            outcomes.append(ingest(item.topic, item.raw))
        except Exception as exc:  # the scenario's finding: central must never raise here
            outcomes.append("crash")
            crashes.append(f"{item.family}: {type(exc).__name__}: {str(exc)[:120]}")
    return outcomes, crashes


def subscribed(topic: str) -> bool:
    return any(mqtt.topic_matches_sub(f"{PREFIX}/+/{kind}", topic) for kind in KINDS)


def start_central(tmp_path, broker) -> subprocess.Popen:
    config = {"broker": {"host": broker.host, "port": broker.port, "prefix": PREFIX, "client_id": "central-fuzz"},
              "store": {"path": str(tmp_path / "central.db")}, "review": {"enabled": False}}
    (tmp_path / "central.yaml").write_text(yaml.safe_dump(config))
    return subprocess.Popen([sys.executable, "-m", "trapedge.cli", "central", "--config", str(tmp_path / "central.yaml")],
                            stdout=open(tmp_path / "central.log", "ab"), stderr=subprocess.STDOUT)


def publish_all(broker, items: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fuzz-device")
    client.max_queued_messages_set(0)
    client.connect(broker.host, broker.port)
    client.loop_start()
    infos = [client.publish(topic, raw, qos=1) for topic, raw in items]
    for info in infos:
        info.wait_for_publish(60)
    client.disconnect()
    client.loop_stop()


def central_handled(db) -> int:
    return scalar(db, "SELECT (SELECT COUNT(*) FROM messages) + (SELECT COUNT(*) FROM rejected)")


def test_fuzzed_payloads_never_crash_central(tmp_path, data, mosquitto, settings, row):
    with row(f"4 central fuzz x{settings.fuzz_payloads}") as r:
        payloads = generate(settings.fuzz_payloads, _thumbnail(data), settings.seed)
        outcomes, crashes = ingest_in_process(CentralStore(tmp_path / "inproc.db"), payloads)
        by_outcome = Counter(outcomes)
        unstored_valid = sum(1 for p, o in zip(payloads, outcomes) if p.must_store and o != "stored")

        central = start_central(tmp_path, mosquitto)
        db = tmp_path / "central.db"
        try:
            wait_for(lambda: db.exists() and "subscribed" in (tmp_path / "central.log").read_text(), 30,
                     "central subscribed")
            routed = [(p, o) for p, o in zip(payloads, outcomes) if subscribed(p.topic)]
            expected = 0
            for start in range(0, len(routed), CHUNK):  # below Mosquitto's 1000 queued messages per session
                chunk = routed[start:start + CHUNK]
                publish_all(mosquitto, [(p.topic, p.raw) for p, _ in chunk])
                expected += sum(1 for _, o in chunk if o in ("stored", "rejected"))  # a crash leaves no row
                _wait_for_progress(lambda: central_handled(db), expected, stall_s=20)
            canary = messages.StatusMessage(device=DEVICE, state="online", bundle_version="canary", health={})
            publish_all(mosquitto, [(topic_of("status"), canary.encode())])
            canary_stored = _eventually(lambda: query(db, "SELECT 1 FROM messages WHERE id = ?", canary.id), 15)
        finally:
            alive = central.poll() is None
            if alive:
                central.send_signal(signal.SIGTERM)
                rc = central.wait(30)
            else:
                rc = central.returncode
        stored, rejected = scalar(db, "SELECT COUNT(*) FROM messages") - int(canary_stored), \
            scalar(db, "SELECT COUNT(*) FROM rejected")
        reasonless = scalar(db, "SELECT COUNT(*) FROM rejected WHERE reason = ''")
        broker_crash = int(not alive or not canary_stored)
        match_errors = (tmp_path / "central.log").read_text(errors="replace").count("ERROR trapedge.central: indexing")
        r.figures = {"payloads": len(payloads), "stored": by_outcome["stored"], "rejected": by_outcome["rejected"],
                     "duplicate ids": by_outcome["duplicate"], "crashes": len(crashes) + broker_crash,
                     "valid not stored": unstored_valid, "via broker": f"{len(routed)} sent/{stored} stored/"
                     f"{rejected} rejected", "indexing errors (log)": match_errors}
        r.note = "; ".join(sorted({c[:110] for c in crashes})[:2])
        if broker_crash:
            r.note += f"; central {'exited ' + str(rc) if not alive else 'alive but stopped ingesting'} " \
                      f"(canary {'stored' if canary_stored else 'not stored'})"
        assert not crashes, crashes[:5]
        assert broker_crash == 0, (tmp_path / "central.log").read_text()[-3000:]
        assert unstored_valid == 0
        assert (stored, rejected) == (sum(1 for _, o in routed if o == "stored"),
                                      sum(1 for _, o in routed if o == "rejected"))
        assert reasonless == 0 and rc == 0


def _eventually(predicate, timeout: float) -> bool:
    try:
        wait_for(predicate, timeout, "it")
        return True
    except AssertionError:
        return False


def _wait_for_progress(count, target: int, stall_s: float) -> None:
    """Wait while ``count()`` grows towards ``target``; return once reached or stalled for ``stall_s``."""
    last, since = -1, time.monotonic()
    while True:
        now = count()
        if now >= target:
            return
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return
        time.sleep(0.3)
