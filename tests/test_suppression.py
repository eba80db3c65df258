"""Repeated static false positives: the pure rule on designed sequences, the recorder, store, status, the
``trapedge suppress`` and ``trapedge central suppressions`` commands, and a replay of MLWIC's fixed
camera CA-01 through the real INT8 pipeline.
"""

from __future__ import annotations

import csv
import json
import re
from contextlib import nullcontext as does_not_raise
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from common.wire import load_schema
from edge.analysis.analyzer import FrameAnalysis
from edge.analysis.config import PrivacyConfig
from edge.analysis.labels import LabelSpace, combine_labels
from edge.capture.frame import Frame
from edge.events.bursts import BurstConfig
from edge.events.rules import RulesConfig, WatchRule
from edge.events.suppression import SuppressionConfig, candidates, iou, observe, release
from edge.runtime.detections import Detections
from edge.storage.recorder import AlertConfig, Identity, Recorder
from edge.storage.store import Store
from edge.wire.messages import StatusMessage

T0 = datetime(2026, 3, 1, 6, 0, tzinfo=timezone(timedelta(hours=-8)))
RULE = SuppressionConfig()  # 5 events spanning 2 h, IoU 0.7, boxes up to 0.1 of the frame
ROCK = (0.10, 0.40, 0.20, 0.55)  # a static false positive: 1.5 % of the frame
NIGHT_ROCK = (0.095, 0.395, 0.205, 0.56)  # the rock in an infrared frame, boxed a little larger: IoU 0.83
GAP = 10.0  # the burst gap (BurstConfig's default)


# --- the pure rule ---------------------------------------------------------------------------------
def _replay(sightings, rule=RULE, clusters=()):
    """``(seconds after T0, box, night)`` one frame each, through ``observe``; the verdict of each
    frame's box (suppressed or not) and the clusters at the end."""
    verdicts = []
    for seconds, box, night in sightings:
        seen = observe(clusters, "sd", np.array([box]), np.array([True]), T0 + timedelta(seconds=seconds), night,
                       GAP, rule)
        clusters = seen.clusters
        verdicts.append(seen.suppressed_by[0] is not None)
    return verdicts, clusters


def _every(hours, count, box=ROCK, night=lambda i: False, start=0.0):
    """One sighting every ``hours``, ``count`` times (each its own event)."""
    return [(start + i * hours * 3600, box, night(i)) for i in range(count)]


def _jitter(box, i, pixels=0.004):
    """The box moved a little, as a detector's box on the same object does from frame to frame."""
    d = pixels * ((i % 3) - 1)
    return (box[0] + d, box[1] - d, box[2] + d, box[3] + d)


@pytest.mark.parametrize(("sightings", "first_suppressed", "events"), [
    # a rock in one event an hour: events 1..5 span 4 h at the 5th, which is suppressed with all after it
    (_every(1.0, 8), 4, 5 + 3),
    # one event every 10 minutes: the 5th spans 40 min; suppressed at the 13th (2 h after the first)
    (_every(1 / 6, 15), 12, 15),
    # the box jitters by a pixel or so, and events still count
    ([(i * 3600, _jitter(ROCK, i), False) for i in range(6)], 4, 6),
    # day and night alternate (an infrared frame boxes the rock a little larger): one place, both counted
    ([(i * 6 * 3600, ROCK if i % 2 == 0 else NIGHT_ROCK, i % 2 == 1) for i in range(6)], 4, 6),
    # a resting animal: a box at one place every 5 s for 4 hours is one burst, so one event: never
    ([(i * 5.0, ROCK, False) for i in range(4 * 720)], None, 1),
    # a resting animal's four long bursts, hours apart: 4 events < 5: never
    ([(h * 3600 + i * 5.0, ROCK, False) for h in (0, 3, 6, 9) for i in range(200)], None, 4),
    # 5 events within an hour (a busy trail's evening), then nothing: never (span 48 min < 2 h)
    (_every(0.2, 5), None, 5),
])
def test_a_place_is_suppressed_after_enough_events_over_hours(sightings, first_suppressed, events):
    verdicts, clusters = _replay(sightings)
    expected = [first_suppressed is not None and i >= first_suppressed for i in range(len(sightings))]
    assert verdicts == expected
    (cluster,) = clusters
    assert cluster.events == events
    assert cluster.suppressed is (first_suppressed is not None)


def test_day_and_night_events_are_counted_apart():
    sightings = [(i * 6 * 3600, ROCK if i % 2 == 0 else NIGHT_ROCK, i % 2 == 1) for i in range(6)]
    _, (cluster,) = _replay(sightings)
    assert (cluster.day_events, cluster.night_events) == (3, 3)
    assert cluster.since == T0 + timedelta(hours=24)  # the 5th event


@pytest.mark.parametrize(("box", "label", "source", "suppressible"), [
    (ROCK, "other", "classifier", True),  # the classifier cannot name it: the typical rock
    (ROCK, "deer_antelope", "classifier", True),  # whatever the label, day or night
    (ROCK, "person", "detector", False),  # people and vehicles are never suppressed
    (ROCK, "vehicle", "classifier", False),
    ((0.0, 0.0, 1.0, 1.0), "fox", "whole_frame", False),  # the classifier's frame-sized box is no place
    ((0.0, 0.2, 0.4, 0.8), "deer_antelope", "classifier", False),  # 24 % of the frame: a close animal
])
def test_which_boxes_may_be_suppressed(box, label, source, suppressible):
    det = Detections(np.array([box], np.float32) * 100, np.array([0.8]), np.array([0]),
                     {"label": np.array([label], dtype=object), "label_source": np.array([source], dtype=object)})
    ok = candidates(det)
    verdicts = []
    clusters: tuple = ()
    for i in range(8):
        seen = observe(clusters, "sd", np.array([box]), ok, T0 + timedelta(hours=i), False, GAP, RULE)
        clusters = seen.clusters
        verdicts.append(seen.suppressed_by[0] is not None)
    assert verdicts[-1] is suppressible
    assert len(clusters) == int(suppressible)


def test_a_released_place_needs_new_evidence():
    _, clusters = _replay(_every(1.0, 6))
    (cluster,) = clusters
    freed = release(cluster)
    assert (freed.state, freed.events, freed.since) == ("released", 0, None)
    verdicts, (after,) = _replay(_every(1.0, 6, start=7 * 3600.0), clusters=(freed,))
    assert verdicts == [False, False, False, False, True, True]  # 5 new events spanning 4 h
    assert after.id == cluster.id and after.state == "suppressed"


def test_places_are_forgotten_after_the_window_and_capped_per_source():
    rule = SuppressionConfig(window_days=2, max_clusters=10)
    _, clusters = _replay(_every(1.0, 6), rule=rule)
    assert clusters[0].suppressed
    # a month later the rock is gone: a box elsewhere, and the old place is forgotten
    seen = observe(clusters, "sd", np.array([(0.6, 0.6, 0.7, 0.7)]), np.array([True]), T0 + timedelta(days=30),
                   False, GAP, rule)
    assert [c.box for c in seen.clusters] == [(0.6, 0.6, 0.7, 0.7)] and seen.removed == (clusters[0].id,)
    # 12 places seen once each: the 10 freshest stay, the suppressed one last to go
    for i in range(12):
        x = 0.3 + 0.05 * i
        clusters = observe(clusters, "sd", np.array([(x, 0.0, x + 0.04, 0.04)]), np.array([True]),
                           T0 + timedelta(hours=7, minutes=i), False, GAP, rule).clusters
    assert len(clusters) == 10 and any(c.suppressed for c in clusters)
    assert min(c.box[0] for c in clusters if not c.suppressed) == pytest.approx(0.3 + 0.05 * 3)


@pytest.mark.parametrize(("settings", "expectation"), [
    ({}, does_not_raise()),
    ({"min_events": 1}, pytest.raises(ValidationError, match="min_events")),
    ({"iou": 0.1}, pytest.raises(ValidationError, match="iou")),
    ({"window_days": 1, "min_span_hours": 30}, pytest.raises(ValidationError, match="forgotten")),
    ({"max_clusters": 10_000}, pytest.raises(ValidationError, match="max_clusters")),
    ({"min_event": 3}, pytest.raises(ValidationError, match="min_event")),
])
def test_config_is_bounded(settings, expectation):
    with expectation:
        SuppressionConfig(**settings)


def test_iou_against_independent_arithmetic():
    # 10x10 boxes overlapping by 5x10: 50 / 150
    assert iou((0, 0, 10, 10), np.array([[5, 0, 15, 10], [20, 20, 30, 30]])) == pytest.approx([1 / 3, 0.0])


# --- the recorder, the store, the status ---------------------------------------------------------
SPACE = LabelSpace(("animal", "person"), ("fox", "deer_antelope", "other"))


def _analysis(rgb, boxes, seconds, label="fox", key=None):
    """A frame of boxes labelled ``label`` by a sure classifier."""
    k = SPACE.classifier.index(label)
    probs = np.full((len(boxes), len(SPACE.classifier)), 0.05, np.float32)
    probs[:, k] = 0.9
    det = Detections(np.array(boxes, np.float32).reshape(-1, 4), np.full(len(boxes), 0.8, np.float32),
                     np.zeros(len(boxes), int), {"species_probs": probs})
    det = combine_labels(det, SPACE).with_data(embedded=np.zeros(len(boxes), bool),
                                               confident_animal=np.ones(len(boxes), bool))
    frame = Frame("sd", key or f"f{seconds}", T0 + timedelta(seconds=seconds), "exif", rgb=rgb)
    return FrameAnalysis(frame, det, False, 0.5, 1.0, False)


def _recorder(store, rule=RULE):
    return Recorder(store, Identity("cam", None, "trapedge", "emb", "v1"), BurstConfig(),
                    RulesConfig(watch=[WatchRule(label="fox", threshold=0.5)]), AlertConfig(), PrivacyConfig(),
                    SPACE, rule)


@pytest.fixture(scope="module")
def frame_rgb(data):
    return np.asarray(Image.open(data / "frames/ena24_small/8831.jpg").convert("RGB").resize((640, 480)))


def test_suppressed_boxes_are_stored_marked_and_raise_nothing(tmp_path, frame_rgb):
    store = Store(tmp_path / "s.db")
    recorder = _recorder(store)
    h, w = frame_rgb.shape[:2]
    rock = [ROCK[0] * w, ROCK[1] * h, ROCK[2] * w, ROCK[3] * h]
    fox = [300, 200, 500, 450]  # 16 % of the frame: never a candidate
    results = [recorder.record(_analysis(frame_rgb, [rock], hour * 3600)) for hour in range(5)]
    recorder.close_idle(idle_seconds=0)
    assert [r.alert for r in results] == ["fox"] * 4 + [None]  # the 5th event (4 h): suppressed
    assert [r.event_id is None for r in results] == [False] * 4 + [True]
    assert [r.suppressed for r in results] == [0] * 4 + [1]
    marks = store.conn.execute("SELECT suppressed_by FROM detections ORDER BY id").fetchall()
    (cluster,) = store.clusters()
    assert [m for (m,) in marks] == [None] * 4 + [cluster.id]  # stored, never dropped
    # a fox beside the rock: the fox raises its event and alert, the rock's box is marked
    both = recorder.record(_analysis(frame_rgb, [rock, fox], 5 * 3600))
    assert both.alert == "fox" and both.suppressed == 1
    # a restart keeps the clusters
    again = _recorder(store)
    assert again.record(_analysis(frame_rgb, [rock], 6 * 3600)).event_id is None
    status = again.suppression_status()
    assert status["suppressed_clusters"] == 1 and status["suppressions"][0]["events"] == 7
    message = json.loads(StatusMessage(device="cam", state="online", health={"frames": 7, **status}).encode())
    jsonschema.validate(message, load_schema("status"))


def test_a_release_from_another_process_reaches_the_running_recorder(tmp_path, frame_rgb):
    store = Store(tmp_path / "r.db")
    recorder = _recorder(store)
    h, w = frame_rgb.shape[:2]
    rock = [ROCK[0] * w, ROCK[1] * h, ROCK[2] * w, ROCK[3] * h]
    for hour in range(5):
        recorder.record(_analysis(frame_rgb, [rock], hour * 3600))
    (cluster,) = store.clusters()
    other = Store(store.path)  # what `trapedge suppress release` opens
    assert other.release_cluster(cluster.id).state == "released"
    assert other.release_cluster("0123456789ab") is None
    other.close()
    assert recorder.suppression_status()["suppressed_clusters"] == 0
    assert recorder.record(_analysis(frame_rgb, [rock], 6 * 3600)).alert == "fox"
    assert store.clusters()[0].events == 1  # new evidence starts at the release


@pytest.mark.parametrize(("suppressions", "valid"), [
    ([{"id": "a1b2c3d4e5f6", "source": "sd", "box": [0.1, 0.4, 0.2, 0.55], "events": 9,
       "since": "2026-03-01T10:00:00.000-08:00"}], True),
    ([{"id": "a1b2c3d4e5f6", "source": "sd", "box": [0.1, 0.4, 0.2, 1.5], "events": 9,
       "since": "2026-03-01T10:00:00-08:00"}], False),  # a box outside the frame
    ([{"id": "a1b2c3d4e5f6", "source": "sd", "box": [0.1, 0.4, 0.2, 0.5], "events": 9,
       "since": "2026-03-01T10:00:00-08:00", "note": "x"}], False),  # an unknown field
    ([{"id": f"{i:012x}", "source": "sd", "box": [0.1, 0.4, 0.2, 0.5], "events": 9,
       "since": "2026-03-01T10:00:00Z"} for i in range(21)], False),  # more than 20
])
def test_status_schema_bounds_the_list(suppressions, valid):
    message = json.loads(StatusMessage(device="cam", state="online",
                                       health={"suppressed_clusters": 21, "suppressions": suppressions}).encode())
    expectation = does_not_raise() if valid else pytest.raises(jsonschema.ValidationError)
    with expectation:
        jsonschema.validate(message, load_schema("status"))


# --- the commands ----------------------------------------------------------------------------------
def test_suppress_list_and_release(tmp_path, frame_rgb, capsys):
    from trapedge.cli import main

    store = Store(tmp_path / "state" / "trapedge.db")
    recorder = _recorder(store)
    h, w = frame_rgb.shape[:2]
    for hour in range(5):
        recorder.record(_analysis(frame_rgb, [[ROCK[0] * w, ROCK[1] * h, ROCK[2] * w, ROCK[3] * h]], hour * 3600))
    (cluster,) = store.clusters()
    config = tmp_path / "edge.yaml"
    config.write_text(f"device_id: cam\nsources: [{{type: folder, id: sd, path: {tmp_path}}}]\n"
                      f"store: {{path: {store.path}}}\n")
    assert main(["suppress", "list", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert f"{cluster.id}  sd" in out and "suppressed" in out and "1 clusters, 1 suppressed" in out
    assert main(["suppress", "release", "nosuchid0000", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "no cluster 'nosuchid0000'" in err and len(err.strip().splitlines()) == 1
    assert main(["suppress", "release", cluster.id, "--config", str(config)]) == 0
    assert "after 5 new events spanning 2 h" in capsys.readouterr().out
    assert store.clusters()[0].state == "released"


def test_central_lists_each_devices_latest_suppressions(tmp_path, capsys):
    from central.ingest import parse
    from central.store import CentralStore
    from central.suppressions import device_suppressions, main

    store = CentralStore(tmp_path / "central.db")
    place = {"id": "a1b2c3d4e5f6", "source": "sd", "box": [0.1, 0.4, 0.2, 0.55], "events": 9,
             "since": "2026-03-01T10:00:00.000-08:00"}
    sent = [("cam1", {"suppressed_clusters": 0, "suppressions": []}),
            ("cam1", {"suppressed_clusters": 1, "suppressions": [place]}),
            ("cam2", {"frames": 3}), ("cam2", None)]  # cam2: an older device, then its last will
    for device, health in sent:
        state = "online" if health is not None else "offline"
        raw = StatusMessage(device=device, state=state, health=health).encode()
        message = parse(f"trapedge/{device}/status", raw, "trapedge")
        assert not hasattr(message, "reason"), message
        store.add_message(message)
    bad = StatusMessage(device="cam1", state="online", health={"suppressions": [{**place, "box": [2, 0, 0, 0]}]})
    assert "status schema" in parse("trapedge/cam1/status", bad.encode(), "trapedge").reason
    # a status cam1 wrote an hour ago, delivered late from its outbox, is not its latest
    late = StatusMessage(device="cam1", state="online", health={"suppressed_clusters": 0, "suppressions": []},
                         time=datetime.now(timezone.utc) - timedelta(hours=1))
    store.add_message(parse("trapedge/cam1/status", late.encode(), "trapedge"))
    # a NaN stored before ingest refused it made json_extract fail for every device
    with store.lock:
        store.conn.execute("INSERT INTO messages (id, kind, device, topic, payload, received_at) VALUES "
                           "('x', 'status', 'cam3', 'trapedge/cam3/status', '{\"state\": \"online\", "
                           "\"health\": {\"t\": NaN}}', '2026-01-01T00:00:00Z')")
    places, totals = device_suppressions(store)
    assert totals == {"cam1": 1, "cam2": 0}
    assert [(p.device, p.id, p.events) for p in places] == [("cam1", "a1b2c3d4e5f6", 9)]
    store.close()
    config = tmp_path / "central.yaml"
    config.write_text(f"store: {{path: {tmp_path / 'central.db'}}}\n")
    assert main(["--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["suppressions"][0]["id"] == "a1b2c3d4e5f6"


# --- the replay on a real fixed camera -----------------------------------------------------------
MLWIC = "species/mlwic_ca01"
NOT_ANIMALS = {"Empty", "Human", "Vehicle"}
INFO_BAR_FONT = {  # the camera's 5x4-pixel glyphs in MLWIC's 256-pixel frames, grey level / 25 (0 black, 9 white)
    "0": "0551 4334 6116 4334 0440", "1": "0330 0440 0240 0350 0551", "2": "3663 2135 0142 2521 4653",
    "3": "4651 2145 0363 2255 3551", "4": "0050 0471 3773 4685 0040", "5": "5664 6321 4564 2236 2552",
    "6": "3663 5322 6564 6336 3552", "7": "4665 0153 0340 1500 3100", "8": "3663 6336 6666 6446 2552",
    "9": "3663 6336 5666 2236 2552", "-": "0000 0000 3664 2332 0000", ":": "0110 0550 0110 0440 0220",
    " ": "0000 0000 0000 0000 0000", "A": "0330 1552 5335 6657 4004", "P": "5652 6344 6551 6100 4000",
    "M": "4014 7556 6666 6226 4004",
}
_GLYPHS = np.array([[int(v) * 25 for v in rows.replace(" ", "")] for rows in INFO_BAR_FONT.values()], np.float32)
_STAMP = re.compile(r"(\d{4})-(\d\d)-(\d\d) +(\d{1,2}):(\d\d):(\d\d) +([AP])")
CAMERA_ZONE = timezone(timedelta(hours=-8))  # Pacific standard time; only differences between frames matter


def info_bar_time(path: Path) -> datetime:
    """The capture time burned into the top info bar of an MLWIC CA-01 frame (the files carry no EXIF):
    22 characters on a 4-pixel grid from x = 4, each the nearest glyph of ``INFO_BAR_FONT``."""
    grey = np.asarray(Image.open(path).convert("L"), np.float32)[0:5, 4:92]
    cells = grey.reshape(5, 22, 4).transpose(1, 0, 2).reshape(22, 20)
    text = "".join(np.array(list(INFO_BAR_FONT))[((cells[:, None] - _GLYPHS[None]) ** 2).sum(-1).argmin(1)])
    match = _STAMP.match(text)
    assert match, f"{path.name}: info bar read as {text!r}"
    year, month, day, hour, minute, second, half = match.groups()
    hour24 = int(hour) % 12 + (12 if half == "P" else 0)
    return datetime(int(year), int(month), int(day), hour24, int(minute), int(second), tzinfo=CAMERA_ZONE)


@dataclass(frozen=True)
class Seen:
    """One MLWIC frame as the camera saw it: its label, capture time and the pipeline's boxes."""

    path: Path
    label: str
    time: datetime
    detections: Detections
    night: bool


@pytest.fixture(scope="session")
def mlwic_seen(data, bundle_dir):
    """Every CA-01 frame through the real INT8 pipeline (the bundle's detector, classifier and label
    combiner, info bars cut, the motion gate off: each frame is analysed), in capture order. ~80 s."""
    from edge.app.config import EdgeConfig
    from edge.app.factory import build_analyzer
    from edge.capture.decode import read_frame

    root = data / MLWIC
    config = EdgeConfig.model_validate({
        "device_id": "ca01", "bundle": {"path": str(bundle_dir)}, "gate": {"enabled": False},
        "preprocess": {"detect_info_bars": True}, "sources": [{"type": "folder", "id": "ca01", "path": str(root)}]})
    analyzer = build_analyzer(config)
    seen = []
    with open(root / "labels.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            path = root / row["file"]
            analysis = analyzer.analyse(read_frame(path, "ca01", row["file"]))
            seen.append(Seen(path, row["label"], info_bar_time(path), analysis.detections, analysis.night))
    return analyzer.space, sorted(seen, key=lambda s: s.time)


def test_info_bar_times_follow_the_cameras_frame_numbers(mlwic_seen):
    """An independent check of the OCR: the camera numbers its frames in the order it takes them."""
    _, seen = mlwic_seen
    numbers = [int(s.path.stem.rsplit("_", 1)[1]) for s in seen]
    assert len(seen) == 1307 and numbers == sorted(numbers)
    assert (seen[0].time, seen[-1].time) == (datetime(2015, 11, 30, 15, 54, 4, tzinfo=CAMERA_ZONE),
                                             datetime(2016, 5, 11, 10, 44, 55, tzinfo=CAMERA_ZONE))


def _record_all(space, seen, path, rule):
    from edge.capture.decode import read_frame

    store = Store(path)
    recorder = Recorder(store, Identity("ca01", None, "trapedge", "emb", "v1"), BurstConfig(), RulesConfig(),
                        AlertConfig(), PrivacyConfig(), space, rule)
    for s in seen:
        frame = read_frame(s.path, "ca01", s.path.name)
        frame = Frame("ca01", s.path.name, s.time, "exif", rgb=frame.pixels, path=s.path)
        recorder.record(FrameAnalysis(frame, s.detections, s.night, 0.0, float("nan"), False))
    recorder.close_idle(idle_seconds=0)
    return store


FIGURES = ("false events", "events raised by a false positive", "false positive boxes", "false positive boxes kept",
           "animal boxes", "animal boxes kept", "true animal boxes", "true animal boxes kept",
           "animal frames with a true box", "animal frames with a true box in an event")


def _replay_figures(store, seen, half, fp_places):
    """Per half of the sequence (``A``: the first ``half`` frames in capture order, ``B``: the rest).

    Counts events whose frames are all labelled Empty (``false events``) and events whose voting boxes
    that were not suppressed all lie at a false positive's place (IoU >= 0.5 with a voting box on an
    Empty frame: ``events raised by a false positive``, whatever the frames' labels); voting boxes
    on Empty frames, and on animal frames (all, and ``true``: not at a false positive's place), with
    how many were kept (not suppressed); animal frames with a true box, and how many are in an event.
    """
    order = {s.path.name: i for i, s in enumerate(seen)}
    label = {s.path.name: s.label for s in seen}
    part = {name: "A" if i < half else "B" for name, i in order.items()}
    figures = {p: dict.fromkeys(FIGURES, 0) for p in "AB"}
    events: dict[str, list[str]] = {}
    for eid, key in store.conn.execute("SELECT event_id, key FROM frames WHERE event_id IS NOT NULL"):
        events.setdefault(eid, []).append(key)
    event_boxes: dict[str, list[bool]] = {}  # kept voting boxes of an event: at a false positive's place?
    true_frames: dict[str, bool] = {}  # animal frame with a true box -> in an event
    rows = store.conn.execute("SELECT f.key, f.event_id, f.width, f.height, d.x1, d.y1, d.x2, d.y2, d.suppressed_by "
                              "FROM detections d JOIN frames f ON f.id = d.frame_id WHERE d.confidence >= ?",
                              (BurstConfig().min_crop_confidence,))
    for key, eid, w, h, x1, y1, x2, y2, mark in rows:
        at_fp = bool(iou((x1 / w, y1 / h, x2 / w, y2 / h), fp_places).max() >= 0.5)
        if eid is not None and mark is None:
            event_boxes.setdefault(eid, []).append(at_fp)
        counts = figures[part[key]]
        if label[key] == "Empty":
            counts["false positive boxes"] += 1
            counts["false positive boxes kept"] += mark is None
        elif label[key] not in NOT_ANIMALS:
            counts["animal boxes"] += 1
            counts["animal boxes kept"] += mark is None
            counts["true animal boxes"] += not at_fp
            counts["true animal boxes kept"] += not at_fp and mark is None
            if not at_fp:
                true_frames[key] = eid is not None
    for eid, keys in events.items():
        counts = figures[part[min(keys, key=order.__getitem__)]]
        counts["false events"] += all(label[k] == "Empty" for k in keys)
        counts["events raised by a false positive"] += bool(event_boxes.get(eid)) and all(event_boxes[eid])
    for key, in_event in true_frames.items():
        figures[part[key]]["animal frames with a true box"] += 1
        figures[part[key]]["animal frames with a true box in an event"] += in_event
    return figures


def test_replay_of_a_fixed_camera(mlwic_seen, tmp_path):
    """CA-01's 1,307 frames (Nov 2015 - May 2016) in capture order through the recorder, without and
    with suppression at its defaults. The defaults were chosen on the first half (A) before the second
    (B, frames from 2016-03-18 09:23 on) was replayed: min_events and min_span_hours as proposed in
    the issue; max_box_area from A's false-positive boxes on Empty frames, at most 4.5 % of the frame
    (0.1 leaves twice that); iou 0.7, since the proposed 0.6 suppressed 3 of A's 219 true animal
    boxes (a bobcat leaving by the right edge on 3 days of 11) and 0.7 none. The figures that count are
    B's; the clusters B's frames meet were built from A's frames on, as on a camera.
    """
    space, seen = mlwic_seen
    half = len(seen) // 2
    fp_places = np.array([s.detections.xyxy[i] / 256 for s in seen if s.label == "Empty"
                          for i in np.flatnonzero(s.detections.confidence >= BurstConfig().min_crop_confidence)])
    base = _replay_figures(_record_all(space, seen, tmp_path / "off.db", SuppressionConfig(enabled=False)),
                           seen, half, fp_places)
    store = _record_all(space, seen, tmp_path / "on.db", SuppressionConfig())
    on = _replay_figures(store, seen, half, fp_places)
    print(f"\n{'':<42} {'A: off':>7} {'A: on':>6} {'B: off':>7} {'B: on':>6}")
    for name in FIGURES:
        print(f"{name:<42} {base['A'][name]:>7} {on['A'][name]:>6} {base['B'][name]:>7} {on['B'][name]:>6}")
    for cluster in store.clusters():
        if cluster.suppressed:
            print(f"suppressed at the end: {cluster.id} box {np.round(np.array(cluster.box) * 256).astype(int).tolist()} "
                  f"{cluster.events} events {cluster.first_seen:%Y-%m-%d %H:%M} .. {cluster.last_seen:%Y-%m-%d %H:%M}")
    b, b0 = on["B"], base["B"]
    assert b0["events raised by a false positive"] >= 1 and b0["false events"] >= 1  # the bank at the left edge
    assert b["events raised by a false positive"] <= 0.1 * b0["events raised by a false positive"]  # >= 90 % gone
    assert b["false events"] <= 0.1 * b0["false events"]
    assert b["true animal boxes kept"] >= 0.99 * b["true animal boxes"]
    assert b["animal frames with a true box in an event"] >= 0.99 * b["animal frames with a true box"]
