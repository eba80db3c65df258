"""Compact alerts and embeddings for constrained links: sizes, round trips, refusals, ingest, re-ID cost.

The projection is fitted on ``reid/lion/train`` through the default bundle's own embedder (a signed
copy with ``export.projection`` added); the re-ID cost is measured on the held-out lions and the
SpotID leopards with central's own matching core.
"""

import json
import shutil
import struct
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import ValidationError

from central.compact import compact_kind_of, compact_vectors, load_tables, parse_compact
from central.config import BrokerConfig, CentralConfig, IngestConfig, ReviewConfig, StoreConfig
from central.enroll import embed_images, folder_images, open_embedder
from central.evaluate import LabelledSet, compact_set, evaluate
from central.ingest import Rejected
from central.service import CentralService, Ingestor
from central.sides import side_of_name
from central.store import CentralStore
from common import compact
from common.compact import ALERT_BYTES, MAX_BYTES, Malformed, WireTable, decode, device_tag
from edge.events.bursts import Event, event_id
from edge.publish.mqtt import MqttConfig, MqttEncoding, Publisher
from edge.runtime.bundle import BundleError, load_bundle
from edge.storage.store import Store
from edge.wire.compact import CompactCodec
from edge.wire.messages import AlertMessage, Box, EmbeddingMessage
from export.projection import add_projection, fit_projection

PREFIX, DEVICE = "trapedge", "cam-ridge-01"
CAMERA = timezone(timedelta(hours=5, minutes=30))  # India, where the SpotID leopards were photographed
TRIGGERS_PER_DAY = 100


@pytest.fixture(scope="module")
def compact_bundle(bundle_dir, data, tmp_path_factory) -> Path:
    """A signed copy of the default bundle with the compact projection added (dev key)."""
    root = Path(shutil.copytree(bundle_dir, tmp_path_factory.mktemp("compact") / "bundle"))
    add_projection(root, data)
    return root


@pytest.fixture(scope="module")
def codec(compact_bundle) -> CompactCodec:
    return CompactCodec.of(load_bundle(compact_bundle), DEVICE)


@pytest.fixture(scope="module")
def tables(compact_bundle) -> dict[bytes, WireTable]:
    return load_tables([compact_bundle])


@pytest.fixture(scope="module")
def leopard_vectors(data, compact_bundle) -> np.ndarray:
    images = folder_images(data / "reid" / "leopard_spotid" / "crops")
    embedder, _ = open_embedder(compact_bundle)
    return embed_images(embedder, images[:6])[1]


def _event(label: str = "leopard", start: datetime | None = None) -> Event:
    start = start or datetime(2019, 3, 1, 19, 49, 36, tzinfo=CAMERA)
    return Event(id=event_id(DEVICE, "sd", "IMG_0001.JPG"), source_id="sd", start=start, end=start + timedelta(seconds=4),
                 frames=3, label=label, score=0.83, probs={label: 0.83}, counts={label: 2})


def alert_json(codec: CompactCodec, label: str = "leopard", **event) -> dict:
    message = AlertMessage(device=DEVICE, site="north", event=_event(label, **event), thumbnail=None)
    return message.to_json()


def embedding_json(vector, codec: CompactCodec, /, **changes) -> dict:
    message = EmbeddingMessage(device=DEVICE, event_id=_event().id, source_id="sd",
                               frame_time=datetime(2019, 3, 1, 19, 49, 38, tzinfo=CAMERA),
                               box=Box((0.1, 0.25, 0.3, 0.4), 0.91, "leopard", 0.77, "classifier"), vector=vector,
                               model=codec.embedder, model_version=codec.table.version)
    return {**message.to_json(), **changes}


def wire(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --- sizes and round trips -----------------------------------------------------------------------

def test_alert_fits_51_bytes_and_decodes_to_what_was_sent(codec, tables):
    sent = alert_json(codec)
    raw = codec.encode("alert", wire(sent))
    assert len(raw) == ALERT_BYTES == 27 <= MAX_BYTES["alert"] == 51
    alert = decode(raw, "alert", tables)
    assert isinstance(alert, compact.CompactAlert), getattr(alert, "reason", "")
    assert alert.label == "leopard" and abs(alert.score - 0.83) <= 0.5 / 255
    assert alert.head.time == datetime(2019, 3, 1, 19, 49, 36, tzinfo=CAMERA)
    assert alert.head.time.utcoffset() == timedelta(hours=5, minutes=30)
    assert sent["event_id"].startswith(compact.event_prefix(alert.head.event)) and len(compact.event_prefix(alert.head.event)) == 18
    assert (alert.frames, alert.boxes) == (3, 2)
    assert alert.head.device == device_tag(DEVICE) and alert.head.bundle == codec.table.tag
    assert len(wire(sent)) > 10 * len(raw)  # the JSON, even without a thumbnail


def test_embedding_fits_222_bytes_and_keeps_the_projected_direction(compact_bundle, codec, tables, leopard_vectors):
    vector = leopard_vectors[0]
    sent = embedding_json(vector, codec)
    raw = codec.encode("embedding", wire(sent))
    assert len(raw) == codec.table.embedding_bytes == 222 <= MAX_BYTES["embedding"]
    got = decode(raw, "embedding", tables)
    assert isinstance(got, compact.CompactEmbedding), getattr(got, "reason", "")
    # independent expectation: the projection computed here in float64 from the stored file
    rows = np.load(compact_bundle / "projection.npy", allow_pickle=False).astype(np.float64)
    expected = (np.asarray(sent["vector"]) - rows[0]) @ rows[1:].T
    cosine = float(got.vector @ expected / np.linalg.norm(got.vector) / np.linalg.norm(expected))
    assert got.vector.size == 189 and cosine > 0.999
    assert np.allclose(got.bbox, (0.1, 0.25, 0.3, 0.4), atol=0.5 / 255)
    assert (got.label, got.label_source) == ("leopard", "classifier")
    assert abs(got.label_score - 0.77) <= 0.5 / 255 and abs(got.confidence - 0.91) <= 0.5 / 255
    assert got.head.time == datetime(2019, 3, 1, 19, 49, 38, tzinfo=CAMERA)
    assert len(wire(sent)) > 30 * len(raw)


def test_an_embedding_without_label_score_or_label_round_trips(codec, tables, leopard_vectors):
    raw = codec.encode("embedding", wire(embedding_json(leopard_vectors[1], codec, label=None, label_score=None,
                                                       label_source="rollup")))
    got = decode(raw, "embedding", tables)
    assert isinstance(got, compact.CompactEmbedding)
    assert (got.label, got.label_score, got.label_source) == (None, None, "rollup")


@pytest.mark.parametrize("make, reason", [
    (lambda c, v: wire(alert_json(c, label="unicorn")), "not in the bundle's wire labels"),
    (lambda c, v: wire(alert_json(c, start=datetime(1969, 12, 31, tzinfo=timezone.utc))), "outside 1970..2106"),
    (lambda c, v: wire(alert_json(c, start=datetime(2019, 3, 1, tzinfo=timezone(timedelta(minutes=10))))),
     "quarter hour"),
    (lambda c, v: wire({**alert_json(c), "device": "cam-other"}), "this codec is"),
    (lambda c, v: wire({**alert_json(c), "event_id": "ev-1"}), "badly formed"),
    (lambda c, v: wire({k: x for k, x in alert_json(c).items() if k != "counts"}), "fields a compact record needs"),
    (lambda c, v: b"{not json", "Expecting property name"),
])
def test_alerts_without_a_compact_form_are_refused(codec, leopard_vectors, make, reason):
    with pytest.raises(ValueError, match=reason):
        codec.encode("alert", make(codec, leopard_vectors[0]))


@pytest.mark.parametrize("changes, reason", [
    ({"model_version": "2020.01.01-000000"}, "this bundle's projection is for"),
    ({"model": "another-embedder"}, "this bundle's projection is for"),
    ({"vector": [0.1] * 512, "dim": 512}, "cannot be projected"),
])
def test_embeddings_of_another_model_are_refused(codec, leopard_vectors, changes, reason):
    with pytest.raises(ValueError, match=reason):
        codec.encode("embedding", wire(embedding_json(leopard_vectors[0], codec, **changes)))


# --- what central refuses ------------------------------------------------------------------------

def _alert_raw(codec) -> bytes:
    return codec.encode("alert", wire(alert_json(codec)))


def _embedding_raw(codec, vectors) -> bytes:
    return codec.encode("embedding", wire(embedding_json(vectors[0], codec)))


def _patched(raw: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(raw)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


EMBED_BODY = compact.HEAD.size  # offset of the embedding's box bytes
MALFORMED = [
    ("alert", lambda a, e: b"", "shorter than the 22-byte head"),
    ("alert", lambda a, e: a[:21], "shorter than the 22-byte head"),
    ("alert", lambda a, e: a[:-1], "version 1 alerts are 27"),
    ("alert", lambda a, e: a + b"\0", "version 1 alerts are 27"),
    ("alert", lambda a, e: a + b"\0" * 25, "more than the 51"),
    ("embedding", lambda a, e: e + b"\0", "more than the 222"),
    ("embedding", lambda a, e: e[:-1], "'s are 222 (189 values)"),
    ("embedding", lambda a, e: e[:40], "'s are 222 (189 values)"),
    ("alert", lambda a, e: _patched(a, 0, ">B", 0x21), "compact version 2"),
    ("alert", lambda a, e: _patched(a, 0, ">B", 0x02), "compact version 0"),
    ("alert", lambda a, e: e[:27], "type 2 (embedding) on the alert topic"),
    ("embedding", lambda a, e: a, "type 1 (alert) on the embedding topic"),
    ("alert", lambda a, e: _patched(a, 0, ">B", 0x1F), "type 15 (unknown)"),
    ("alert", lambda a, e: _patched(a, 5, ">4s", b"\xde\xad\xbe\xef"), "unknown bundle deadbeef"),
    ("alert", lambda a, e: _patched(a, 13, ">b", 57), "outside -12:00..+14:00"),
    ("embedding", lambda a, e: _patched(e, 13, ">b", -49), "outside -12:00..+14:00"),
    ("alert", lambda a, e: _patched(a, 22, ">H", 0xFFFE), "label index 65534 is outside the bundle's"),
    ("alert", lambda a, e: _patched(a, 22, ">H", 0xFFFF), "alert without a label"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 5, ">H", 0xFFFE), "label index 65534 is outside"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 8, ">B", 0x05), "unknown label source"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 8, ">B", 0x19), "reserved bits"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 9, ">e", float("nan")), "not a positive finite"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 9, ">e", float("inf")), "not a positive finite"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 9, ">e", -0.5), "not a positive finite"),
    ("embedding", lambda a, e: _patched(e, EMBED_BODY + 9, ">e", 0.0), "not a positive finite"),
    ("embedding", lambda a, e: e[:compact.EMBEDDING_HEAD_BYTES] + bytes(189), "all zeros"),
]


@pytest.mark.parametrize("kind, make, reason", MALFORMED)
def test_malformed_records_are_refused_with_a_reason(codec, tables, leopard_vectors, kind, make, reason):
    raw = make(_alert_raw(codec), _embedding_raw(codec, leopard_vectors))
    result = decode(raw, kind, tables)
    assert isinstance(result, Malformed) and reason in result.reason, result
    parsed = parse_compact(f"{PREFIX}/{DEVICE}/c/{kind}", raw, PREFIX, tables)
    assert isinstance(parsed, Rejected) and reason in parsed.reason


def test_random_bytes_never_raise(tables):
    rng = np.random.default_rng(7)
    for size in [*range(0, 60), *range(200, 240)]:
        for kind in ("alert", "embedding"):
            raw = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            assert isinstance(decode(raw, kind, tables), Malformed | compact.CompactAlert | compact.CompactEmbedding)


def test_a_record_on_another_devices_topic_is_refused(codec, tables):
    result = parse_compact(f"{PREFIX}/cam-other/c/alert", _alert_raw(codec), PREFIX, tables)
    assert isinstance(result, Rejected) and "is not topic device 'cam-other'" in result.reason


@pytest.mark.parametrize("topic, expected", [
    ("trapedge/cam1/c/alert", "alert"),
    ("trapedge/cam1/c/embedding", "embedding"),
    ("trapedge/cam1/c/event", None),
    ("trapedge/cam1/alert", None),
    ("trapedge//c/alert", None),
    ("other/cam1/c/alert", None),
])
def test_compact_topics(topic, expected):
    assert compact_kind_of(topic, PREFIX) == expected


# --- the bundle carries the projection, signed ---------------------------------------------------

def test_the_projection_is_signed_and_checked(compact_bundle, tmp_path):
    from common.signing import DEV_PUBLIC_KEY
    from edge.runtime.bundle import BundleTrust

    copy = Path(shutil.copytree(compact_bundle, tmp_path / "bundle"))
    load_bundle(copy, BundleTrust((str(DEV_PUBLIC_KEY),)))
    rows = np.load(copy / "projection.npy")
    rows[1, 0] += 1e-3
    np.save(copy / "projection.npy", rows)
    with pytest.raises(BundleError, match="projection.npy does not match its sha256"):
        load_bundle(copy, BundleTrust((str(DEV_PUBLIC_KEY),)))


def test_a_bundle_without_projection_has_no_compact_codec(bundle_dir):
    bundle = load_bundle(bundle_dir)
    if bundle.manifest.compact is not None:
        pytest.skip("this default bundle was exported with its projection")
    with pytest.raises(BundleError, match="no compact projection"):
        CompactCodec.of(bundle, DEVICE)
    with pytest.raises(ValueError, match="compact_bundles: .*no compact projection"):
        load_tables([bundle_dir])


def test_fit_projection_whitens_the_kept_components():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 32)) * np.linspace(5, 0.1, 32)
    mean, components, kept = fit_projection(vectors, 8)
    projected = (vectors - mean) @ components.T
    assert np.allclose(projected.std(axis=0, ddof=1), 1.0, atol=1e-6)
    assert np.allclose(np.corrcoef(projected.T), np.eye(8), atol=1e-6)
    variances = np.sort(np.var(vectors, axis=0))[::-1]
    assert kept == pytest.approx(variances[:8].sum() / variances.sum(), rel=0.1)
    with pytest.raises(ValueError, match="needs more than 8 vectors of at least 8 dimensions"):
        fit_projection(vectors[:8], 8)


def test_fit_projection_without_whitening_is_a_rotation_onto_the_top_components():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 32)) * np.linspace(5, 0.1, 32)
    mean, components, _ = fit_projection(vectors, 8, whiten=False)
    assert np.allclose(components @ components.T, np.eye(8), atol=1e-9)  # orthonormal: distances kept
    projected = (vectors - mean) @ components.T
    assert np.all(np.diff(projected.std(axis=0, ddof=1)) <= 1e-9)  # largest variance first, not equalised


# --- config and publisher ------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, kinds", [
    ({}, set()),
    ({"alert": "compact"}, {"alert"}),
    ({"alert": "compact", "embedding": "compact"}, {"alert", "embedding"}),
])
def test_encoding_config(encoding, kinds):
    assert MqttConfig(encoding=encoding).encoding.compact_kinds() == kinds


@pytest.mark.parametrize("encoding", [{"alert": "cbor"}, {"event": "compact"}, {"status": "compact"}])
def test_encoding_config_refuses_what_it_cannot_send(encoding):
    with pytest.raises(ValidationError):
        MqttConfig(encoding=encoding)


def test_publisher_needs_the_codec_for_compact_kinds(tmp_path):
    store = Store(tmp_path / "trapedge.db")
    try:
        with pytest.raises(ValueError, match="needs the bundle's compact encoder"):
            Publisher(MqttConfig(encoding=MqttEncoding(embedding="compact")), DEVICE, store.outbox)
    finally:
        store.close()


class _Recorder:
    """Every payload under ``<prefix>/<device>/#`` as raw bytes."""

    def __init__(self, broker):
        self.received: list[tuple[str, bytes]] = []
        self.subscribed, self.lock = threading.Event(), threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/{DEVICE}/#", qos=1)
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self._add(m.topic, bytes(m.payload))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.subscribed.wait(5)

    def _add(self, topic: str, payload: bytes) -> None:
        with self.lock:
            self.received.append((topic, payload))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(condition, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_compact_messages_reach_central_as_the_same_sightings(mosquitto, tmp_path, compact_bundle, codec,
                                                             leopard_vectors):
    """Edge outbox (JSON) -> publisher (compact on c/ topics) -> Mosquitto -> central sightings."""
    config = CentralConfig(broker=BrokerConfig(host=mosquitto.host, port=mosquitto.port, prefix=PREFIX),
                           store=StoreConfig(path=tmp_path / "central.db"), review=ReviewConfig(enabled=False),
                           ingest=IngestConfig(compact_bundles=[compact_bundle]))
    service = CentralService(config)
    service.start()
    edge_store = Store(tmp_path / "trapedge.db")
    sniffer = _Recorder(mosquitto)
    publisher = None
    try:
        assert service.subscriber.subscribed.wait(10)
        topic = f"{PREFIX}/{DEVICE}"
        edge_store.outbox.add(f"{topic}/alert", AlertMessage(device=DEVICE, site=None, event=_event(), thumbnail=None))
        sent = [_embedding_message(v, codec, i) for i, v in enumerate(leopard_vectors)]
        for message in sent:
            edge_store.outbox.add(f"{topic}/embedding", message)
        mqtt_config = MqttConfig(host=mosquitto.host, port=mosquitto.port, prefix=PREFIX, reconnect_min_s=0.2,
                                 reconnect_max_s=1.0, encoding=MqttEncoding(alert="compact", embedding="compact"))
        publisher = Publisher(mqtt_config, DEVICE, edge_store.outbox, compact=codec)
        publisher.start()
        store = service.store
        n = len(sent)
        def kinds() -> dict[str, int]:
            with store.lock:
                return dict(store.conn.execute("SELECT kind, COUNT(*) FROM messages GROUP BY kind").fetchall())

        assert _wait(lambda: store.count("sightings") == n and kinds().get("embedding") == n
                     and kinds().get("alert") == 1 and len(edge_store.outbox) == 0), (kinds(), store.rejections())
        assert store.count("rejected") == 0
        with sniffer.lock:
            sizes = {t: len(p) for t, p in sniffer.received if "/c/" in t}
            json_topics = [t for t, _ in sniffer.received if "/c/" not in t and not t.endswith("/status")]
        assert json_topics == []
        assert sizes == {f"{topic}/c/alert": 27, f"{topic}/c/embedding": 222}
        # independent expectation: the stored vector is the bundle's projection of the sent vector
        rows = np.load(Path(compact_bundle) / "projection.npy").astype(np.float64)
        sightings = [store.sighting(sid) for (sid,) in store.conn.execute("SELECT id FROM sightings ORDER BY seq")]
        for message, sighting in zip(sent, sightings):
            expected = (message.vector - rows[0]) @ rows[1:].T
            assert float(sighting.vector @ expected / np.linalg.norm(expected)) > 0.999
            assert sighting.model == f"{codec.embedder}+pca189@{codec.table.version}"
            assert sighting.event_id == message.event_id[:18] and sighting.label == "leopard"
            assert sighting.frame_time == message.frame_time.isoformat()
        alert = json.loads(store.conn.execute("SELECT payload FROM messages WHERE kind = 'alert'").fetchone()[0])
        assert (alert["label"], alert["encoding"], alert["counts"]) == ("leopard", "trapedge.compact/1", {"leopard": 2})
        assert len(service.matcher.gallery(sightings[0].model, 189)) == n
        # a redelivered record is recognised by its id, as a JSON message is
        raw = next(p for t, p in sniffer.received if t.endswith("/c/embedding"))
        assert Ingestor(store, PREFIX, compact_tables=load_tables([compact_bundle]))(f"{topic}/c/embedding", raw) == "duplicate"
    finally:
        if publisher is not None:
            publisher.stop(timeout=2)
        sniffer.close()
        edge_store.close()
        service.stop()


def _embedding_message(vector, codec: CompactCodec, index: int) -> EmbeddingMessage:
    return EmbeddingMessage(device=DEVICE, event_id=_event().id, source_id="sd",
                            frame_time=_event().start + timedelta(seconds=index),
                            box=Box((0.1, 0.25, 0.3, 0.4), 0.91, "leopard", 0.77, "classifier"), vector=vector,
                            model=codec.embedder, model_version=codec.table.version)


def test_a_message_without_compact_form_goes_as_json(mosquitto, tmp_path, codec, caplog):
    edge_store = Store(tmp_path / "trapedge.db")
    sniffer = _Recorder(mosquitto)
    mqtt_config = MqttConfig(host=mosquitto.host, port=mosquitto.port, prefix=PREFIX,
                             encoding=MqttEncoding(alert="compact"))
    publisher = Publisher(mqtt_config, DEVICE, edge_store.outbox, compact=codec)
    try:
        edge_store.outbox.add(f"{PREFIX}/{DEVICE}/alert", AlertMessage(device=DEVICE, site=None,
                                                                       event=_event("unicorn"), thumbnail=None))
        publisher.start()
        assert _wait(lambda: len(edge_store.outbox) == 0)
        with sniffer.lock:
            alerts = [(t, p) for t, p in sniffer.received if t.endswith("alert")]
        assert [t for t, _ in alerts] == [f"{PREFIX}/{DEVICE}/alert"] and json.loads(alerts[0][1])["label"] == "unicorn"
        assert "has no compact form" in caplog.text and "not in the bundle's wire labels" in caplog.text
    finally:
        publisher.stop(timeout=2)
        sniffer.close()
        edge_store.close()


# --- the re-ID cost, on the held-out sets --------------------------------------------------------

REID_SETS = {"leopard_spotid": "reid/leopard_spotid/crops", "lion_val": "reid/lion/val"}


@pytest.mark.parametrize("name", list(REID_SETS))
def test_compact_embeddings_keep_95_percent_of_rank1(data, compact_bundle, name):
    root = data / REID_SETS[name]
    images = folder_images(root)
    embedder, _ = open_embedder(compact_bundle)
    images, vectors = embed_images(embedder, images)
    full = LabelledSet(name, [i.individual for i in images],
                       [side_of_name(i.path.relative_to(root).as_posix()) for i in images],
                       vectors / np.linalg.norm(vectors, axis=1, keepdims=True), [])
    small = compact_set(full, compact_bundle)
    assert small.vectors.shape == (len(images), 189) and small.name == f"{name}/compact"
    full_figures, small_figures = evaluate(full, local=False), evaluate(small, local=False)
    print(f"{name}: rank-1 {small_figures.rank1:.3f} compact / {full_figures.rank1:.3f} full; "
          f"top-5 {small_figures.top5:.3f} / {full_figures.top5:.3f}")
    assert small_figures.rank1 >= 0.95 * full_figures.rank1
    assert small_figures.top5 >= 0.95 * full_figures.top5


def test_compact_vectors_are_what_a_decoded_record_holds(compact_bundle, codec, tables, leopard_vectors):
    stored, model = compact_vectors(compact_bundle, leopard_vectors[:2])
    for vector, row in zip(leopard_vectors[:2], stored):
        got = decode(codec.encode("embedding", wire(embedding_json(vector, codec))), "embedding", tables)
        assert np.array_equal(got.vector, row)
    assert model == f"{codec.embedder}+pca189@{codec.table.version}"


def test_bytes_per_day_at_100_triggers(codec):
    """The link budget the README states: one alert and k embeddings per trigger."""
    alert, embedding = ALERT_BYTES, codec.table.embedding_bytes
    per_day = {k: TRIGGERS_PER_DAY * (alert + k * embedding) for k in (1, 3)}
    assert (alert, embedding) == (27, 222)
    assert per_day == {1: 24_900, 3: 69_300}


@pytest.mark.parametrize("with_projection", [False, True])
def test_validate_config_says_when_the_bundle_cannot_send_compact(bundle_dir, compact_bundle, tmp_path, with_projection):
    from edge.app.checks import run_problems
    from edge.app.config import command_defaults

    bundle = compact_bundle if with_projection else bundle_dir
    if not with_projection and load_bundle(bundle_dir).manifest.compact is not None:
        pytest.skip("this default bundle was exported with its projection")
    config = command_defaults(str(tmp_path), bundle={"path": str(bundle)},
                              mqtt={"encoding": {"embedding": "compact"}}, store={"path": str(tmp_path / "t.db")})
    problems = [p for p in run_problems(config) if p.startswith("mqtt.encoding")]
    assert problems == ([] if with_projection else [
        f"mqtt.encoding: embedding compact needs the bundle's compact projection, which {bundle} lacks: add it with "
        "`python -m export.projection BUNDLE` or send json"])


def test_enrolled_compact_gallery_matches_a_compact_sighting_from_the_field(data, compact_bundle, codec, tables,
                                                                            tmp_path):
    from central.enroll import main as enrol
    from central.matching import Matcher

    root = data / "reid" / "leopard_spotid" / "crops"
    (tmp_path / "central.yaml").write_text(f"store:\n  path: {tmp_path / 'central.db'}\n")
    assert enrol([str(root), "--bundle", str(compact_bundle), "--config", str(tmp_path / "central.yaml"), "--known",
                  "--compact"]) == 0
    store = CentralStore(tmp_path / "central.db")
    try:
        models = store.conn.execute("SELECT DISTINCT model, dim FROM sightings").fetchall()
        assert models == [(f"{codec.embedder}+pca189@{codec.table.version}", 189)]
        # one of the enrolled leopards seen again in the field, sent compact
        images = folder_images(root)
        embedder, _ = open_embedder(compact_bundle)
        vector = embed_images(embedder, images[:1])[1][0]
        raw = codec.encode("embedding", wire(embedding_json(vector, codec)))
        assert Ingestor(store, PREFIX, compact_tables=tables)(f"{PREFIX}/{DEVICE}/c/embedding", raw) == "stored"
        (sid,) = store.conn.execute("SELECT id FROM sightings WHERE device = ?", (DEVICE,)).fetchone()
        candidates = Matcher(store).propose(store.sighting(sid))
        best = store.sighting(candidates[0].image_id)
        assert best.individual == images[0].individual and best.name == images[0].path.relative_to(root).as_posix()
        assert candidates[0].cosine > 0.99  # the same photograph, enrolled and sent compact
    finally:
        store.close()
