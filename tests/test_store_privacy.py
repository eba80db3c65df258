"""Store migrations and retention; privacy handling of people and vehicles."""

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from common.sqlite import NotThisStore
from common.wire import load_schema
from edge.analysis.analyzer import Analyzer, FrameAnalysis
from edge.analysis.config import DetectionConfig, PreprocessConfig, PrivacyConfig
from edge.analysis.gate import MotionGate, MotionGateConfig
from edge.analysis.labels import LabelSpace, combine_labels, frame_prediction
from edge.capture.decode import decode_image
from edge.capture.frame import Frame
from edge.events.bursts import BurstConfig
from edge.events.rules import RulesConfig, WatchRule
from edge.runtime.detections import Detections
from edge.storage.recorder import AlertConfig, Identity, Recorder
from edge.storage.store import SCHEMA_VERSION, Store, StoreConfig, migrate
from edge.wire.messages import StatusMessage
from edge.wire.thumbnails import blur, thumbnail_jpeg

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def test_migrations_are_versioned_and_idempotent(tmp_path):
    store = Store(tmp_path / "a.db")
    assert store.conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert migrate(store.conn) == SCHEMA_VERSION  # nothing to do twice
    tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"frames", "detections", "events", "embeddings", "failures", "outbox"} <= tables
    store.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    with pytest.raises(NotThisStore, match=f"edge store schema {SCHEMA_VERSION + 1} is newer than this trapedge"):
        migrate(store.conn)


def _old_frame(store, key, days_old):
    when = (datetime.now(timezone.utc) - timedelta(days=days_old)).isoformat()
    store.conn.execute("INSERT INTO frames (source_id, key, time, time_source, processed_at, flags) "
                       "VALUES ('sd', ?, ?, 'mtime', ?, '')", (key, when, when))


def test_retention_never_touches_the_outbox(tmp_path):
    store = Store(tmp_path / "r.db")
    for i in range(5):
        _old_frame(store, f"old{i}", days_old=40)
        _old_frame(store, f"new{i}", days_old=1)
        store.outbox.add("trapedge/cam/status", StatusMessage(device="cam", state="online", health={"pad": "x" * 20_000}))
    assert store.apply_retention(StoreConfig(path=store.path, retention_days=30)) == 5
    assert [k for (k,) in store.conn.execute("SELECT key FROM frames ORDER BY key")] == [f"new{i}" for i in range(5)]
    assert len(store.outbox) == 5
    store.apply_retention(StoreConfig(path=store.path, retention_days=30, max_mb=0.001))
    assert store.conn.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 0
    assert len(store.outbox) == 5  # still over the size budget, but unsent messages stay
    assert store.integrity_check() == "ok"


class FixedClassifier:
    """Stands in for the classifier: every crop gets the given label (and an embedding, when shared);
    the whole frame gets ``frame_label`` (default: the same, as sure)."""

    def __init__(self, labels, label, score=0.9, frame_label=None, frame_score=None, whole_frames=True):
        self.labels, self.k, self.score = labels, labels.index(label), score
        self.spec = SimpleNamespace(whole_frames=whole_frames, taxonomy={})  # learnt whole frames: they vote
        self.frame_k, self.frame_score = labels.index(frame_label or label), frame_score or score
        self.frame = object()

    def crops_of(self, rgb, detections):
        return [rgb] * len(detections)

    def whole(self, rgb):
        return self.frame

    def run_all(self, crops):
        probs = np.zeros((len(crops), len(self.labels)), np.float32)
        for i, crop in enumerate(crops):
            k, score = (self.frame_k, self.frame_score) if crop is self.frame else (self.k, self.score)
            probs[i] = (1 - score) / (len(self.labels) - 1)  # the rest spread evenly
            probs[i, k] = score
        return [probs, np.ones((len(crops), 4), np.float32) / 2]

    def result_of(self, outputs):
        return outputs[0]

    def run_crops(self, crops):
        return self.result_of(self.run_all(crops))


class CountingEmbedder:
    output_dim = 4

    def __init__(self, shared=False):
        self.calls, self.shared = 0, shared

    def crops_of(self, rgb, detections):
        return [rgb] * len(detections)

    def run_crops(self, crops):
        self.calls += len(crops)
        return np.ones((len(crops), 4), np.float32) / 2

    def shares_run_with(self, other):
        return self.shared

    def result_of(self, outputs):
        return outputs[1]


class FixedDetector:
    """A single-class detector (as the pretrained bundle has) that finds one box in the middle."""

    labels = ["animal"]

    def detect(self, rgb, confidence=None):
        h, w = rgb.shape[:2]
        return Detections([[w * 0.25, h * 0.25, w * 0.75, h * 0.75]], [0.9], [0])


@pytest.mark.parametrize("shared", [False, True], ids=["two-graphs", "one-graph"])
@pytest.mark.parametrize(("label", "score", "embedded"), [
    ("person", 0.9, False),
    ("vehicle", 0.9, False),
    ("other", 0.9, False),  # names no animal: a person may be behind it (privacy fails safe)
    ("fox", 0.4, False),  # an animal's label below animal_min_score: not confidently an animal
    ("fox", 0.9, True),
])
def test_only_confident_animals_are_embedded(data, label, score, embedded, shared):
    labels = ["fox", "person", "vehicle", "other"]
    embedder = CountingEmbedder(shared)
    analyzer = Analyzer(FixedDetector(), FixedClassifier(labels, label, score), embedder, MotionGate(MotionGateConfig()),
                        PreprocessConfig(), DetectionConfig(rollup_min_score=None), PrivacyConfig(), 0.3)
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    analysis = analyzer.analyse(Frame("sd", "k", T0, "exif", rgb=rgb))
    assert analysis.detections.labels() == [label]
    # the whole frame votes with the crop (SpeciesNet-style), except on a crop called a person or vehicle
    source = "classifier" if label in ("person", "vehicle") else "ensemble"
    assert analysis.detections.data["label_source"].tolist() == [source]
    assert bool(analysis.detections.data["embedded"][0]) is embedded
    assert embedder.calls == int(embedded and not shared)
    # a person's vector never leaves the analysis, even when the shared graph computed it
    vectors = analysis.detections.data.get("embedding", np.zeros((1, 4)))
    assert bool(np.any(vectors[0])) is embedded


@pytest.mark.parametrize("shared", [False, True], ids=["two-graphs", "one-graph"])
@pytest.mark.parametrize(("embed_labels", "embedded"), [(None, True), (["fox"], True), (["bear"], False), ([], False)])
def test_embed_labels_choose_the_animals_that_are_embedded(data, embed_labels, embedded, shared):
    """A leopard survey embeds leopards alone: the embedder does not run for other animals (a separate
    graph) and no vector of theirs is kept (the shared graph computed it anyway)."""
    embedder = CountingEmbedder(shared)
    analyzer = Analyzer(FixedDetector(), FixedClassifier(["fox", "bear", "person"], "fox", 0.9), embedder,
                        MotionGate(MotionGateConfig()), PreprocessConfig(),
                        DetectionConfig(rollup_min_score=None, embed_labels=embed_labels), PrivacyConfig(), 0.3)
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    det = analyzer.analyse(Frame("sd", "k", T0, "exif", rgb=rgb)).detections
    assert det.labels() == ["fox"] and bool(det.data["confident_animal"][0])
    assert bool(det.data["embedded"][0]) is embedded
    assert embedder.calls == int(embedded and not shared)
    assert bool(np.any(det.data.get("embedding", np.zeros((1, 4)))[0])) is embedded


@pytest.mark.parametrize(("crop", "crop_score", "frame", "label", "embedded"), [
    ("person", 0.6, "fox", "person", False),  # the frame never talks a person crop into an animal
    ("vehicle", 0.6, "fox", "vehicle", False),
    ("fox", 0.4, "fox", "fox", True),  # an unsure crop the whole frame agrees with: confidently a fox
    ("fox", 0.6, "other", "other", False),  # the frame's doubt makes a sure crop unsure: blurred, never embedded
])
def test_the_frame_votes_but_never_unmasks_a_person(data, crop, crop_score, frame, label, embedded):
    labels = ["fox", "person", "vehicle", "other"]
    classifier = FixedClassifier(labels, crop, crop_score, frame_label=frame, frame_score=0.95)
    analyzer = Analyzer(FixedDetector(), classifier, CountingEmbedder(), MotionGate(MotionGateConfig()),
                        PreprocessConfig(), DetectionConfig(rollup_min_score=None), PrivacyConfig(), 0.3)
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    det = analyzer.analyse(Frame("sd", "k", T0, "exif", rgb=rgb)).detections
    assert det.labels() == [label]
    assert bool(det.data["embedded"][0]) is embedded
    off = Analyzer(FixedDetector(), classifier, CountingEmbedder(), MotionGate(MotionGateConfig()),
                   PreprocessConfig(), DetectionConfig(frame_context=False, rollup_min_score=None), PrivacyConfig(), 0.3)
    assert off.analyse(Frame("sd", "k", T0, "exif", rgb=rgb)).detections.labels() == [crop]
    # a classifier that only learnt crops (the default bundle's) gets no frame vote unless asked
    crops_only = FixedClassifier(labels, crop, crop_score, frame_label=frame, frame_score=0.95, whole_frames=False)
    auto = Analyzer(FixedDetector(), crops_only, CountingEmbedder(), MotionGate(MotionGateConfig()),
                    PreprocessConfig(), DetectionConfig(rollup_min_score=None), PrivacyConfig(), 0.3)
    assert auto.analyse(Frame("sd", "k", T0, "exif", rgb=rgb)).detections.labels() == [crop]


class NoBoxDetector(FixedDetector):
    def detect(self, rgb, confidence=None):
        return Detections.empty()


@pytest.mark.parametrize(("frame", "score", "label", "blurred"), [
    ("person", 0.95, "person", True), ("fox", 0.95, "fox", False),
    # person + vehicle 0.67 is below the overrule's 0.7, but no detector "animal" box is overruled: a vehicle
    ("vehicle", 0.5, "vehicle", True), ("fox", 0.5, "fox", False)])
def test_a_frame_without_a_box_is_classified_whole(data, frame, score, label, blurred):
    """The whole-frame backup also catches a person the detector missed: the frame is a person frame,
    its box is blurred (not confidently an animal) and nothing is embedded."""
    labels = ["fox", "person", "vehicle", "other"]
    analyzer = Analyzer(NoBoxDetector(), FixedClassifier(labels, frame, score), CountingEmbedder(),
                        MotionGate(MotionGateConfig()), PreprocessConfig(), DetectionConfig(), PrivacyConfig(), 0.3)
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    det = analyzer.analyse(Frame("sd", "k", T0, "exif", rgb=rgb)).detections
    assert det.labels() == [label] and det.data["label_source"].tolist() == ["whole_frame"]
    assert bool(det.data["confident_animal"][0]) is not blurred
    assert not det.data["embedded"].any()
    assert frame_prediction(det)[0] == label


def test_person_thumbnails_are_blurred_in_store_and_alert(tmp_path, data):
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    box = np.array([100, 100, 400, 300], np.float32)
    sharp, _ = thumbnail_jpeg(rgb, box, blurred=False)
    soft, _ = thumbnail_jpeg(rgb, box, blurred=True)
    assert len(soft) < len(sharp) / 2  # blurred JPEGs carry far less detail
    patch = rgb[100:300, 100:400]
    assert np.abs(np.diff(blur(patch).astype(int), axis=1)).mean() < np.abs(np.diff(patch.astype(int), axis=1)).mean() / 3

    store = Store(tmp_path / "p.db")
    space = LabelSpace(("animal",), ("fox", "person", "vehicle"))
    recorder = Recorder(store, Identity("cam", None, "trapedge", "emb", "v1"), BurstConfig(),
                        RulesConfig(watch=[WatchRule(label="person", threshold=0.5)]), AlertConfig(),
                        PrivacyConfig(), space.labels)
    probs = np.zeros((1, 3), np.float32)
    probs[0, 1] = 0.9
    det = combine_labels(Detections([box], [0.9], [0], {"species_probs": probs}), space)
    frame = Frame("sd", "k1", T0, "exif", rgb=rgb)
    result = recorder.record(FrameAnalysis(frame, det.with_data(embedded=np.zeros(1, bool)), False, 0.5, 1.0, False))
    assert result.alert == "person"
    (stored,) = store.conn.execute("SELECT thumbnail FROM events").fetchone()
    assert len(stored) < len(sharp) / 2
    assert store.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0
    topics = [m.topic for m in store.outbox.pending()]
    assert topics == ["trapedge/cam/alert"]


class PersonDetector(FixedDetector):
    """A three-class detector (as a fine-tuned bundle has) that sees a person."""

    labels = ["animal", "person", "vehicle"]

    def detect(self, rgb, confidence=None):
        found = super().detect(rgb, confidence)
        return Detections(found.xyxy, found.confidence, [1])


def test_a_detector_person_is_a_person_whatever_the_species_classifier_says(data):
    embedder = CountingEmbedder()
    analyzer = Analyzer(PersonDetector(), FixedClassifier(["fox", "person"], "fox"), embedder,
                        MotionGate(MotionGateConfig()), PreprocessConfig(), DetectionConfig(rollup_min_score=None), PrivacyConfig(), 0.3)
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    analysis = analyzer.analyse(Frame("sd", "k", T0, "exif", rgb=rgb))
    det = analysis.detections
    assert det.labels() == ["person"] and det.data["label_source"].tolist() == ["detector"]
    assert not det.data["embedded"].any() and embedder.calls == 0


def test_a_detector_person_raises_no_fox_event_and_no_fox_alert(tmp_path, data):
    """The reproduction: a three-class detector finds a person, the species classifier calls the crop
    a fox, and the watch-list has fox. Events, alerts, rows and messages must all say person."""
    analyzer = Analyzer(PersonDetector(), FixedClassifier(["fox", "person"], "fox"), CountingEmbedder(),
                        MotionGate(MotionGateConfig()), PreprocessConfig(), DetectionConfig(), PrivacyConfig(), 0.3)
    store = Store(tmp_path / "fox.db")
    recorder = Recorder(store, Identity("cam", None, "trapedge", "emb", "v1"), BurstConfig(),
                        RulesConfig(watch=[WatchRule(label="fox", threshold=0.3)]), AlertConfig(), PrivacyConfig(),
                        analyzer.labels)
    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=640).rgb
    results = [recorder.record(analyzer.analyse(Frame("sd", f"k{i}", T0 + timedelta(seconds=i), "exif", rgb=rgb)))
               for i in range(3)]
    recorder.close_idle(idle_seconds=0)
    assert [r.alert for r in results] == [None, None, None]
    assert store.conn.execute("SELECT label FROM events").fetchall() == [("person",)]
    assert store.conn.execute("SELECT DISTINCT label, label_source FROM detections").fetchall() == [("person", "detector")]
    kinds = [m.topic.rsplit("/", 1)[1] for m in store.outbox.pending()]
    assert kinds == ["event"]  # no alert, no embedding
    assert '"label":"person"' in store.outbox.pending()[0].payload.decode()


@pytest.mark.parametrize(("label", "blurred"), [("fox", False), ("vehicle", True)])
def test_embedding_messages_carry_the_crop_when_configured(tmp_path, data, label, blurred):
    import base64
    import io
    import json

    import jsonschema
    from PIL import Image

    rgb = decode_image(data / "frames/ena24_small/8831.jpg", max_side=960).rgb
    box = np.array([300, 200, 700, 600], np.float32)
    space = LabelSpace(("animal",), ("fox", "person", "vehicle"))
    store = Store(tmp_path / "c.db")
    identity = Identity("cam", None, "trapedge", "emb", "v1")
    recorder = Recorder(store, identity, BurstConfig(), RulesConfig(), AlertConfig(embedding_crop_max_side=128),
                        PrivacyConfig(), space.labels)
    probs = np.zeros((1, 3), np.float32)
    probs[0, space.index(label)] = 0.9
    det = Detections([box], [0.9], [0], {"species_probs": probs, "embedding": np.ones((1, 4), np.float32) / 2})
    det = combine_labels(det, space).with_data(embedded=np.ones(1, bool))
    frame = Frame("sd", "k1", T0, "exif", rgb=rgb)
    recorder.record(FrameAnalysis(frame, det, False, 0.5, 1.0, False))
    (message,) = [m for m in store.outbox.pending() if m.topic.endswith("/embedding")]
    payload = json.loads(message.payload)
    jsonschema.validate(payload, load_schema("embedding"))
    jpeg = base64.b64decode(payload["crop"]["base64"])
    crop = Image.open(io.BytesIO(jpeg))
    assert max(crop.size) == 128 and crop.size == (payload["crop"]["width"], payload["crop"]["height"])
    sharp, _ = thumbnail_jpeg(rgb, box, 128, 256_000, blurred=False)
    assert (len(jpeg) < len(sharp) * 0.8) is blurred  # vehicles leave the device blurred


def test_real_people_are_never_embedded_and_always_blurred(data, bundle_dir, tmp_path):
    """MLWIC's Human and Vehicle frames through the default bundle (whose classifier calls people
    `other`, `vehicle` or an animal, never `person`): no box of them may be embedded or leave sharp."""
    import csv

    from edge.app.config import command_defaults
    from edge.app.factory import build_analyzer, build_recorder
    from edge.capture.decode import read_frame
    from edge.runtime.bundle import load_bundle

    root = data / "species" / "mlwic_ca01"
    with open(root / "labels.csv", newline="") as handle:
        people = [row["file"] for row in csv.DictReader(handle) if row["label"] in ("Human", "Vehicle")][::5]
    config = command_defaults(bundle={"path": str(bundle_dir)}, gate={"enabled": False},
                              preprocess={"detect_info_bars": True}, store={"path": str(tmp_path / "p.db")},
                              alerts={"embedding_crop_max_side": 64})
    bundle = load_bundle(bundle_dir)
    analyzer = build_analyzer(config, bundle)
    store = Store(tmp_path / "p.db")
    recorder = build_recorder(config, store, analyzer, bundle)
    boxes = []
    for name in people:
        analysis = analyzer.analyse(read_frame(root / name, "cam", name))
        recorder.record(analysis)
        det = analysis.detections
        boxes += [(label, bool(det.data["confident_animal"][i])) for i, label in enumerate(det.labels())]
    assert len(people) >= 25 and len(boxes) >= 10, "the frames must give boxes to check"
    assert not any(animal for _, animal in boxes), f"a person frame's box counted as an animal: {boxes}"
    assert store.conn.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0] == 0
    assert not [m for m in store.outbox.pending(1000) if m.topic.endswith("/embedding")]
