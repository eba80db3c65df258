"""central ingest: real device payloads through a real Mosquitto into the central store.

Embeddings are computed from the SpotID leopard crops by the default bundle's embedder.
"""

import io
import json
import time
from contextlib import nullcontext as does_not_raise
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from PIL import Image

from central.config import BrokerConfig, CentralConfig, ReviewConfig, StoreConfig
from central.enroll import embed_images, folder_images, jpeg_of, open_embedder
from central.ingest import Message, Rejected, kind_of, parse, sighting_of
from central.matching import Matcher
from central.service import CentralService, Ingestor
from central.store import SCHEMA_VERSION, CentralStore
from common.wire import check_device
from edge.events.bursts import Event
from edge.wire.messages import Box, EmbeddingMessage, EventMessage, Picture, StatusMessage

PREFIX, DEVICE = "trapedge", "cam-ridge-01"


@pytest.fixture(scope="module")
def leopards(data, bundle_dir):
    """(individual, path, vector) of every SpotID leopard crop."""
    images = folder_images(data / "reid" / "leopard_spotid" / "crops")
    embedder, _ = open_embedder(bundle_dir)
    images, vectors = embed_images(embedder, images)
    return [(i.individual, i.path, v) for i, v in zip(images, vectors)]


def embedding_message(vector, *, crop: bytes | None = None, device=DEVICE, event="ev-1") -> dict:
    """A device's embedding payload, as the edge builds it."""
    return EmbeddingMessage(
        device=device, event_id=event, source_id="sd", frame_time=datetime(2019, 3, 1, 19, 49, 36, tzinfo=timezone.utc),
        box=Box((0.1, 0.2, 0.3, 0.4), 0.9, "leopard", 0.8, "classifier"), vector=vector, model="m", model_version="1",
        crop=None if crop is None else Picture(crop, *Image.open(io.BytesIO(crop)).size)).to_json()


def event_message() -> dict:
    event = Event(id="ev-1", source_id="sd", start=datetime(2019, 3, 1, 19, 49, tzinfo=timezone.utc),
                  end=datetime(2019, 3, 1, 19, 50, tzinfo=timezone.utc), frames=3, label="leopard", score=0.9,
                  probs={"leopard": 0.9}, counts={"leopard": 1}, closed=True)
    return EventMessage(device=DEVICE, site="north", event=event, alerted=False).to_json()


def encode(payload: dict) -> bytes:
    """The payload on the wire (compact JSON, as the edge writes it)."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def topic(kind: str, device: str = DEVICE) -> str:
    return f"{PREFIX}/{device}/{kind}"


@pytest.mark.parametrize("topic_, expected", [
    ("trapedge/cam1/embedding", "embedding"),
    ("trapedge/cam1/status", "status"),
    ("trapedge/cam1/frames", None),
    ("other/cam1/alert", None),
    ("trapedge/a/b/alert", None),
    ("trapedge//alert", None),
])
def test_kind_of_topic(topic_, expected):
    assert kind_of(topic_, PREFIX) == expected


def _bad(payload: dict, **changes) -> bytes:
    return json.dumps({**payload, **changes}).encode()


@pytest.mark.parametrize("make, reason", [
    (lambda v: b"\xff\xfe not utf-8", "not UTF-8"),
    (lambda v: b'{"id": "x",', "not JSON"),
    (lambda v: b"[1, 2]", "JSON list"),
    (lambda v: _bad(embedding_message(v), dim=3), "dim 3"),
    (lambda v: _bad(embedding_message(v), vector=[0.0] * len(v), dim=len(v)), "all zeros"),
    (lambda v: _bad(embedding_message(v), id="not-a-uuid"), "embedding schema: id"),
    (lambda v: _bad(embedding_message(v), vector=[0.5, "0.1", *v[2:].tolist()]), "vector: every item must be a number"),
    (lambda v: _bad(embedding_message(v), vector=[0.5, True, *v[2:].tolist()]), "vector: every item must be a number"),
    (lambda v: _bad(embedding_message(v), vector=[]), "embedding schema: vector"),
    # json.loads accepts NaN / Infinity / 1e999 (found by the reliability fuzzer), anywhere: a NaN bbox was stored
    # and written into megadetector.json; a 400-digit integer was an OverflowError "central bug"
    (lambda v: _bad(embedding_message(v), vector=[float("nan"), *v[1:].tolist()]), "NaN is not a number"),
    (lambda v: _bad(embedding_message(v), vector=[float("inf"), *v[1:].tolist()]), "Infinity is not a number"),
    (lambda v: json.dumps(embedding_message(v)).replace(str(round(float(v[0]), 6)), "1e999", 1).encode(),
     "1e999 is beyond float64's range"),
    (lambda v: _bad(embedding_message(v), bbox=[float("nan"), 0.1, 0.2, 0.2]), "NaN is not a number"),
    (lambda v: _bad(embedding_message(v), confidence=float("nan")), "NaN is not a number"),
    (lambda v: json.dumps(embedding_message(v)).replace(str(round(float(v[0]), 6)), "1" + "0" * 400, 1).encode(),
     "integer of 401 digits is beyond 64 bits"),
    # a lone surrogate could not be stored: the message was acknowledged and lost without a rejected row
    (lambda v: _bad(embedding_message(v), label="\ud800"), "lone UTF-16 surrogate"),
    # the schema's pattern admits times that are no date: every Camtrap DP export then failed
    (lambda v: _bad(embedding_message(v), frame_time="2023-02-30T12:00:00+01:00"), "frame_time"),
    (lambda v: _bad(embedding_message(v), frame_time="2024-05-01T12:00:00+99:99"), "frame_time"),
    (lambda v: _bad(embedding_message(v), frame_time="0000-05-01T12:00:00Z"), "frame_time"),
    (lambda v: _bad(embedding_message(v), time="2024-13-45T99:99:99Z"), "embedding schema: time"),
    (lambda v: _bad(embedding_message(v), device="cam-other"), "differs from topic device"),
    (lambda v: _bad(embedding_message(v), device="cam\n2026-01-01 ERROR forged"), "embedding schema: device"),
    (lambda v: _bad(embedding_message(v), bbox=[0, 0, 2, 1]), "embedding schema: bbox"),
    (lambda v: _bad(embedding_message(v), crop={"format": "jpeg", "bytes": 4, "base64": "AAAA"}),
     "embedding schema: crop"),
    (lambda v: _bad(embedding_message(v), crop={"format": "jpeg", "width": 1, "height": 1, "bytes": 3,
                                                 "base64": "AAAA"}), "crop is not base64 JPEG"),
])
def test_invalid_payloads_are_rejected_with_reason(leopards, make, reason):
    result = parse(topic("embedding"), make(leopards[0][2]), PREFIX)
    assert isinstance(result, Rejected)
    assert reason in result.reason


def test_valid_embedding_becomes_a_normalised_sighting_with_its_crop(leopards):
    _, path, vector = leopards[0]
    crop = jpeg_of(path, max_side=128)
    result = parse(topic("embedding"), encode(embedding_message(vector * 3.0, crop=crop)), PREFIX)
    assert isinstance(result, Message), getattr(result, "reason", "")
    sighting = sighting_of(result)
    sent, kept = (np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), np.float32) for jpeg in (crop, sighting.crop_jpeg))
    assert kept.shape == sent.shape and np.abs(kept - sent).mean() < 2.0  # re-encoded by central, same picture
    assert np.linalg.norm(sighting.vector) == pytest.approx(1.0, abs=1e-5)
    assert float(sighting.vector @ vector) == pytest.approx(1.0, abs=1e-4)  # direction kept (6-decimal wire)
    assert sighting.model == "m@1"


def test_store_keeps_each_message_id_once(tmp_path, leopards):
    store = CentralStore(tmp_path / "central.db")
    ingest = Ingestor(store, PREFIX)
    raw = encode(embedding_message(leopards[0][2]))
    outcomes = [ingest(topic("embedding"), raw) for _ in range(3)]
    assert outcomes == ["stored", "duplicate", "duplicate"]
    assert (store.count("messages"), store.count("sightings")) == (1, 1)


def test_a_known_model_with_another_dimension_is_rejected(tmp_path, leopards):
    store = CentralStore(tmp_path / "central.db")
    vector = leopards[0][2]
    assert Ingestor(store, PREFIX)(topic("embedding"), encode(embedding_message(vector))) == "stored"
    ingest = Ingestor(store, PREFIX)  # a restart: the known dimension comes from the store
    shorter = encode(embedding_message(vector[:100]))
    assert ingest(topic("embedding"), shorter) == "rejected"
    (reason,) = [r[0] for r in store.conn.execute("SELECT reason FROM rejected")]
    assert f"has {vector.size} dimensions, this vector 100" in reason
    assert store.count("sightings") == 1


def test_store_reopens_at_the_same_schema(tmp_path, leopards):
    store = CentralStore(tmp_path / "central.db")
    Ingestor(store, PREFIX)(topic("embedding"), encode(embedding_message(leopards[0][2])))
    store.close()
    again = CentralStore(tmp_path / "central.db")
    assert again.count("sightings") == 1
    assert again.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4


def publish(broker, items: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-device")
    client.connect(broker.host, broker.port)
    client.loop_start()
    for t, raw in items:
        client.publish(t, raw, qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def wait_until(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_service_ingests_through_the_broker_and_proposes_matches(mosquitto, tmp_path, leopards):
    config = CentralConfig(broker=BrokerConfig(host=mosquitto.host, port=mosquitto.port, prefix=PREFIX),
                           store=StoreConfig(path=tmp_path / "central.db"), review=ReviewConfig(enabled=False))
    service = CentralService(config)
    service.start()
    try:
        assert service.subscriber.subscribed.wait(10)
        payloads = [embedding_message(v, event=f"ev-{i}") for i, (_, _, v) in enumerate(leopards[:12])]
        items = [(topic("embedding"), encode(p)) for p in payloads]
        items.append((topic("embedding"), items[0][1]))  # a QoS-1 redelivery
        items += [(topic("event"), encode(event_message())), (topic("alert"), b"{not json"),
                  (topic("status"), encode(StatusMessage(device=DEVICE, state="online").to_json()))]
        publish(mosquitto, items)
        store = service.store
        assert wait_until(lambda: len(service.matcher.gallery("m@1", 1280)) == 12 and store.count("rejected") == 1
                          and store.count("messages") == 14)  # the status, last sent, is stored last
        assert store.count("messages") == 14 and store.count("sightings") == 12
        assert [r[2].split(":")[0] for r in store.rejections()] == ["payload is not JSON"]
        # proposals come from the gallery the service indexed; independent expectation: the 5 most
        # similar other images by brute-force cosine
        anchor = store.sighting(payloads[-1]["id"])
        candidates = Matcher(store).propose(anchor)
        vectors = np.stack([v / np.linalg.norm(v) for _, _, v in leopards[:12]])
        expected = np.argsort(-(vectors[:-1] @ vectors[-1]))[:5]
        assert [c.image_id for c in candidates] == [payloads[i]["id"] for i in expected]
        cosines = [c.cosine for c in candidates]
        assert cosines == sorted(cosines, reverse=True)
    finally:
        service.stop()


@pytest.mark.parametrize("yaml_text, expectation", [
    ("broker:\n  host: 127.0.0.1\n  port: 1883\n", does_not_raise()),
    ("broker:\n  host: 127.0.0.1\n  prot: 1883\n", pytest.raises(Exception, match=r":3: broker.prot")),
    ("gallery:\n  backend: faiss\n", pytest.raises(Exception, match=r":2: gallery.backend")),
])
def test_central_config_errors_name_line_and_key(tmp_path, yaml_text, expectation):
    from common.config_loader import load_config

    path = tmp_path / "central.yaml"
    path.write_text(yaml_text)
    with expectation:
        load_config(path, CentralConfig)


def test_cli_validate_config(tmp_path, capsys):
    from central.auth import hash_password
    from trapedge.cli import main

    example = (Path(__file__).resolve().parents[1] / "deploy" / "central.example.yaml").read_text()
    path = tmp_path / "central.yaml"  # the example with its files in tmp_path and any free port
    path.write_text(example.replace("/etc/trapedge/", f"{tmp_path}/").replace("/var/lib/trapedge/", f"{tmp_path}/")
                    .replace("port: 8080", "port: 0"))
    assert main(["central", "--config", str(path), "--validate-config"]) == 2  # the reviewer's files do not exist
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"review.login: cannot read {tmp_path}/review.hash: No such file or directory"
    (tmp_path / "review.hash").write_text(hash_password("correct horse") + "\n")
    (tmp_path / "review.key").write_bytes(b"k" * 32)
    assert main(["central", "--config", str(path), "--validate-config"]) == 0
    assert "config OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("matching:\n  top_k: 0\n")
    assert main(["central", "--config", str(bad), "--validate-config"]) == 1
    assert "matching.top_k" in capsys.readouterr().err


def test_cli_service_runs_until_sigterm(mosquitto, tmp_path, leopards):
    import signal
    import sqlite3
    import subprocess
    import sys

    db = tmp_path / "central.db"
    config = tmp_path / "central.yaml"
    config.write_text(f"broker:\n  host: {mosquitto.host}\n  port: {mosquitto.port}\nstore:\n  path: {db}\n"
                      "review:\n  port: 0\n")
    process = subprocess.Popen([sys.executable, "-m", "trapedge.cli", "central", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def stored() -> int:
            if not db.exists():
                return -1
            with sqlite3.connect(db) as conn:
                try:
                    return conn.execute("SELECT count(*) FROM sightings").fetchone()[0]
                except sqlite3.OperationalError:
                    return -1
        assert wait_until(lambda: stored() == 0, 20)
        body = encode(embedding_message(leopards[0][2]))
        for _ in range(40):  # until subscribed: the same message again, as a device's retry would
            publish(mosquitto, [(topic("embedding"), body)])
            if wait_until(lambda: stored() == 1, 0.5):
                break
        assert stored() == 1
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "review UI on http://127.0.0.1:" in output and "stopping" in output


@pytest.mark.parametrize("device", ["cam\n2026-01-01 ERROR forged", "cam\x1b[2J", "cam\x7f"])
def test_a_device_id_with_control_characters_is_no_topic_level(device):
    # accepted before, so a newline in a rogue device's id printed a forged line in central's log
    with pytest.raises(ValueError, match="control characters"):
        check_device(device)
