"""One ``trapedge bench`` configuration: the service's pipeline over real frames, timed per stage.

``python -m edge.cli.bench FOLDER --bundle B --precision int8 --frames N`` prints one JSON line
(frames/s, p50/p95 per stage, peak RSS of this process). ``trapedge bench`` (``trapedge/bench.py``)
runs each configuration in its own process and compares them.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from common.config_loader import ConfigError
from edge.analysis.analyzer import Analyzer, FrameAnalysis, FrameFailure
from edge.analysis.pipeline import Pipeline
from edge.app.factory import build_analyzer, build_recorder
from edge.app.memory import one_malloc_arena, release_start_up_memory
from edge.capture.decode import DEFAULT_MAX_SIDE, list_images, read_ahead, read_frame
from edge.cli.argtypes import at_least
from edge.cli.options import add_model_arguments, command_config, fail
from edge.runtime.backends import BackendUnavailable, InferenceBackend
from edge.runtime.bundle import BundleError, load_bundle
from edge.runtime.preprocess import crop
from edge.storage.recorder import Recorder
from edge.storage.store import Store

STAGES = ["decode", "gate", "detect", "second_look", "classify", "whole_frame", "embed", "store", "publish"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one configuration (``trapedge bench`` passes them through)."""
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/frames"),
                        help="real frames to run on (default ../shared/data/frames)")
    parser.add_argument("--frames", type=at_least(1), default=120, help="frames per configuration (the folder repeats)")
    parser.add_argument("--no-costs", action="store_true", help="throughput only: skip the CPU cost passes")
    add_model_arguments(parser)


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    return round(float(np.percentile(values, q)) * 1000, 2) if values else 0.0


def mean_ms(values: list[float]) -> float:
    """The mean of durations in seconds, in milliseconds."""
    return round(float(np.mean(values)) * 1000, 2) if values else 0.0


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def summarise(stage_times: dict[str, list[float]], wall: float, frames: int, cpu: float = 0.0) -> dict[str, Any]:
    """fps, CPU seconds per frame, p50/p95 per stage (ms) and peak RSS (MB) of this process."""
    return {
        "frames": frames,
        "fps": round(frames / wall, 2),
        "cpu_s_per_frame": round(cpu / frames, 4),
        "stages_ms": {s: {"p50": percentile_ms(v, 50), "p95": percentile_ms(v, 95)} for s, v in stage_times.items() if v},
        "peak_rss_mb": peak_rss_mb(),
    }


def decode_times(paths: list[Path]) -> list[float]:
    """Seconds ``read_frame`` takes for each file, measured on its own."""
    times = []
    for path in paths:
        start = time.perf_counter()
        read_frame(path, "bench", "decode", DEFAULT_MAX_SIDE)
        times.append(time.perf_counter() - start)
    return times


class _Cost:
    """CPU seconds (user + system, every thread of the process) of what runs inside ``with``."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __enter__(self) -> _Cost:
        self._start = time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.process_time() - self._start


def frame_costs(paths: list[Path], analyzer: Analyzer, recorder: Recorder, store: Store) -> dict[str, float]:
    """Mean CPU milliseconds per stage, each frame decoded, analysed and recorded in turn (nothing
    overlaps, so each stage's CPU is its own)."""
    cpu: dict[str, list[float]] = {s: [] for s in STAGES}
    for i, path in enumerate(paths):
        with _Cost() as decode:
            frame = read_frame(path, f"cost{i}", "cost", DEFAULT_MAX_SIDE)
        cpu["decode"].append(decode.seconds)
        analysis = analyzer.process(frame)
        if isinstance(analysis, FrameFailure):
            continue
        for stage, seconds in analysis.cpu.items():
            cpu.setdefault(stage, []).append(seconds)
        with _Cost() as record:
            recorder.record(analysis)
        cpu["store"].append(record.seconds)
        with _Cost() as publish:
            store.outbox.pending(limit=100)
        cpu["publish"].append(publish.seconds)
    return {stage: mean_ms(values) for stage, values in cpu.items() if values}


def gated_cost(path: Path, analyzer: Analyzer, repeats: int = 10) -> dict[str, Any]:
    """CPU and wall milliseconds of a frame the motion gate rejects (decode included): the same picture
    again from the same source, as a camera sees an empty scene."""
    analyzer.process(read_frame(path, "gate-check", "first", DEFAULT_MAX_SIDE))  # the reference
    cpu, wall, gated = [], [], 0
    for i in range(repeats):
        start = time.perf_counter()
        with _Cost() as cost:
            analysis = analyzer.process(read_frame(path, "gate-check", f"again{i}", DEFAULT_MAX_SIDE))
        wall.append(time.perf_counter() - start)
        cpu.append(cost.seconds)
        gated += isinstance(analysis, FrameAnalysis) and analysis.gated
    return {"cpu_ms": mean_ms(cpu), "wall_ms": mean_ms(wall), "gated": f"{gated}/{repeats}"}


def crop_costs(frame: np.ndarray, analyzer: Analyzer, counts: tuple[int, ...] = (1, 2, 4, 8),
               repeats: int = 5) -> dict[str, dict[str, float]]:
    """Classify CPU milliseconds for frames with 1-8 animals: batched as the service runs the crops,
    and one crop per run, as it would without batching."""
    classifier = analyzer.classifier
    if classifier is None:
        return {}
    h, w = frame.shape[:2]
    rng = np.random.default_rng(0)
    out: dict[str, dict[str, float]] = {}
    for n in counts:  # boxes of a quarter of the frame's side, spread over it
        x = rng.uniform(0, w * 0.75, n)
        y = rng.uniform(0, h * 0.75, n)
        boxes = np.stack([x, y, x + w / 4, y + h / 4], 1).astype(np.float32)
        crops = [crop(frame, box, classifier.spec.input) for box in boxes]
        batched, single = [], []
        for _ in range(repeats):
            with _Cost() as cost:
                classifier.run_all(crops)
            batched.append(cost.seconds)
            with _Cost() as cost:
                for one in crops:
                    classifier.run_all([one])
            single.append(cost.seconds)
        out[str(n)] = {"batched_cpu_ms": mean_ms(batched), "one_by_one_cpu_ms": mean_ms(single)}
    return out


def burst_costs(paths: list[Path], analyzer: Analyzer, recorder: Recorder,
                lengths: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    """CPU milliseconds per frame for bursts of 1-10 frames of one camera, one event each: decode,
    models, events, store and outbox together."""
    out = {}
    for n in lengths:
        start = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(days=n)
        with _Cost() as cost:
            for i in range(n):
                frame = read_frame(paths[i % len(paths)], f"burst{n}", f"{i}", DEFAULT_MAX_SIDE)
                frame = replace(frame, time=start + timedelta(seconds=i), time_source="exif")
                analysis = analyzer.process(frame)
                if not isinstance(analysis, FrameFailure):
                    recorder.record(analysis)
        out[str(n)] = round(cost.seconds / n * 1000, 2)
    return out


def run_worker(args: argparse.Namespace, backends: Mapping[str, InferenceBackend] | None = None) -> dict[str, Any]:
    """The service's pipeline (analyzer and recorder from the one factory) over ``args.frames`` frames.

    ``backends`` (task -> object with ``run(batch)``) replaces the inference of some models: the
    torch reference uses it so everything but the models is the same code.

    Throughput is measured as the service runs (the next file decodes while the models run); the
    CPU costs after it, one thing at a time, so each figure is that step's own.
    """
    one_malloc_arena()  # as the service does
    config = command_config(args, args.folder)
    bundle = load_bundle(config.bundle.path)
    analyzer = build_analyzer(config, bundle, backends)
    paths = list_images(args.folder)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        recorder = build_recorder(config, store, analyzer, bundle)
        release_start_up_memory()  # as the service does once it has started
        times: dict[str, list[float]] = {s: [] for s in STAGES}
        times["decode"] = decode_times(paths)  # in the run itself decoding overlaps the models
        jobs = ((paths[i % len(paths)], f"bench{i // len(paths)}", f"{i}") for i in range(args.frames))
        start, cpu_start = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(1) as pool, Pipeline(analyzer) as pipeline:
            # decoding overlaps and frames_at_once frames are in flight, as in the service
            for _, analysis in pipeline.results(read_ahead(pool, jobs, DEFAULT_MAX_SIDE)):
                if isinstance(analysis, FrameFailure):
                    continue
                for stage, seconds in analysis.timings.items():
                    times.setdefault(stage, []).append(seconds)  # a stage not in STAGES still counts
                t0 = time.perf_counter()
                recorder.record(analysis)
                times["store"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                store.outbox.pending(limit=100)  # what the publisher reads per drain
                times["publish"].append(time.perf_counter() - t0)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        result = summarise(times, wall, args.frames, cpu)  # peak RSS as the service runs, before the passes below
        if not args.no_costs:
            result["cpu_ms"] = frame_costs(paths, analyzer, recorder, store)
            result["gated"] = gated_cost(paths[0], analyzer)
            sample = read_frame(paths[0], "crops", "crops", DEFAULT_MAX_SIDE)
            if sample.ok:
                result["crops"] = crop_costs(sample.pixels, analyzer)
            result["bursts_cpu_ms_per_frame"] = burst_costs(paths, analyzer, recorder)
        store.close()
    result["torch_imported"] = "torch" in sys.modules
    result["frames_at_once"] = analyzer.frames_at_once
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add_arguments(parser)
    try:
        print(json.dumps(run_worker(parser.parse_args(argv))))
    except (ConfigError, BundleError, BackendUnavailable, FileNotFoundError) as exc:
        return fail("bench", exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
