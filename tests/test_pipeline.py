"""Frames in flight (``bundle.frames_at_once``): the same analyses in the same order, models run together."""

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from edge.analysis.analyzer import FrameAnalysis, FrameFailure
from edge.analysis.pipeline import Pipeline
from edge.app.config import EdgeConfig
from edge.app.factory import build_analyzer
from edge.capture.decode import list_images, read_frame
from edge.capture.frame import Frame
from edge.runtime import machine
from edge.runtime.config import BundleConfig

T0 = datetime(2026, 3, 1, 21, 0, tzinfo=timezone.utc)


def _analyzer(bundle_dir, frames_at_once: int, gate: bool):
    config = EdgeConfig.model_validate({
        "device_id": "cam", "sources": [{"type": "folder", "id": "sd", "path": "/tmp"}],
        "bundle": {"path": str(bundle_dir), "frames_at_once": frames_at_once}, "gate": {"enabled": gate}})
    return build_analyzer(config)


def test_frames_at_once_gives_what_one_frame_at_a_time_gives_in_order(data, bundle_dir):
    paths = list_images(data / "frames")[:12]
    frames = [read_frame(path, "cam", f"{i:02d}") for i, path in enumerate(paths)]
    runs = {}
    for depth in (1, 2):
        analyzer = _analyzer(bundle_dir, depth, gate=True)  # one camera: each frame gated against the one before
        assert analyzer.frames_at_once == depth
        with Pipeline(analyzer) as pipeline:
            runs[depth] = list(pipeline.results(frames))
        session = analyzer.detector.backend.session.get_session_options()
        assert session.intra_op_num_threads == (0 if depth == 1 else max(1, machine.cores() // 2))
    one, two = runs[1], runs[2]
    assert [f.key for f, _ in two] == [f.key for f, _ in one] == [f.key for f in frames]
    assert sum(len(r.detections) for _, r in one if isinstance(r, FrameAnalysis)) > 5
    for (_, a), (_, b) in zip(one, two):
        assert isinstance(a, FrameAnalysis) and isinstance(b, FrameAnalysis)
        assert a.gated == b.gated
        assert a.motion == b.motion or (np.isnan(a.motion) and np.isnan(b.motion))
        assert a.detections.labels() == b.detections.labels()
        np.testing.assert_allclose(a.detections.xyxy, b.detections.xyxy, atol=0.5)
    assert not np.isnan(one[-1][1].motion)  # the gate compared each frame with the one before it


@dataclass
class _Slow:
    """An analyzer whose models wait: frame ``0`` until frame ``1`` has started, so they must overlap."""

    frames_at_once: int

    def __post_init__(self):
        self.started = {key: threading.Event() for key in ("0", "1", "2")}
        self.gated: list[str] = []

    def begin(self, frame):
        self.gated.append(frame.key)
        return frame

    def finish(self, frame):
        self.started[frame.key].set()
        if frame.key == "0" and not self.started["1"].wait(2):
            return FrameFailure(frame, "frame 1 never started while frame 0 ran")
        time.sleep(0.05 if frame.key == "0" else 0)  # frame 1 finishes first; the results still come in order
        return FrameFailure(frame, f"done {frame.key}")


def _frames(n: int) -> list[Frame]:
    return [Frame("cam", str(i), T0 + timedelta(seconds=i), "exif", rgb=np.zeros((8, 8, 3), np.uint8))
            for i in range(n)]


def test_two_frames_at_once_run_their_models_together_and_come_back_in_order():
    slow = _Slow(2)
    with Pipeline(slow) as pipeline:
        results = [(f.key, r.reason) for f, r in pipeline.results(_frames(3))]
    assert results == [("0", "done 0"), ("1", "done 1"), ("2", "done 2")]
    assert slow.gated == ["0", "1", "2"]


def test_one_frame_at_a_time_runs_in_the_callers_thread():
    slow = _Slow(1)
    with Pipeline(slow) as pipeline:
        pipeline.put(_frames(1)[0])
        assert pipeline.full and len(pipeline) == 1
        frame, result = pipeline.take()
    assert result.reason == "frame 1 never started while frame 0 ran"


def test_abandoned_frames_come_back_oldest_first_and_their_results_are_dropped():
    pipeline = Pipeline(_Slow(2))
    frames = _frames(2)
    for frame in frames:
        pipeline.put(frame)
    assert [f.key for f in pipeline.abandon()] == ["0", "1"]
    assert len(pipeline) == 0 and not pipeline.full
    pipeline.close()


@pytest.mark.parametrize(("cores", "memory_mb", "backend", "setting", "expected"), [
    (2, 24_000, {"type": "onnxruntime"}, 0, 2),
    (4, 4_000, {"type": "onnxruntime"}, 0, 2),
    (1, 24_000, {"type": "onnxruntime"}, 0, 1),  # one core: nothing to run together on
    (4, 512, {"type": "onnxruntime"}, 0, 1),  # a Pi Zero 2 W: 512 MB in all
    (6, 8_000, {"type": "tensorrt"}, 0, 1),  # one execution context a model: frames take turns
    (1, 512, {"type": "onnxruntime"}, 3, 3),  # what the config says
])
def test_frames_at_once_auto_follows_cores_memory_and_backend(monkeypatch, cores, memory_mb, backend, setting,
                                                              expected):
    monkeypatch.setattr(machine, "cores", lambda: cores)
    monkeypatch.setattr(machine, "memory_mb", lambda: memory_mb)
    precision = "fp16" if backend["type"] == "tensorrt" else "int8"
    config = BundleConfig(backend=backend, precision=precision, frames_at_once=setting)
    assert config.frames_in_flight() == expected


class _Timed:
    """An analyzer that notes when each frame's models start and end."""

    frames_at_once = 2

    def __init__(self):
        self.spans: dict[str, list[float]] = {}

    def begin(self, frame):
        return frame

    def finish(self, frame):
        start = time.monotonic()
        time.sleep(0.2)
        self.spans[frame.key] = [start, time.monotonic()]
        return FrameFailure(frame, f"done {frame.key}")

    def process(self, frame):
        return self.finish(self.begin(frame))


def test_a_frame_put_alone_waits_for_the_frames_in_flight_and_runs_with_none_beside_it():
    timed = _Timed()
    first, alone = _frames(2)
    with Pipeline(timed) as pipeline:
        pipeline.put(first)
        pipeline.put(alone, alone=True)
        assert len(pipeline) == 2  # in order, the alone frame already analysed
        results = [pipeline.take()[1].reason for _ in range(2)]
    assert results == ["done 0", "done 1"]
    assert timed.spans["1"][0] >= timed.spans["0"][1]  # it started once the frame before it had finished
