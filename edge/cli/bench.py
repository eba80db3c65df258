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
from pathlib import Path
from typing import Any

import numpy as np

from common.config_loader import ConfigError
from edge.analysis.analyzer import FrameFailure
from edge.app.factory import build_analyzer, build_recorder
from edge.capture.decode import DEFAULT_MAX_SIDE, list_images, read_ahead, read_frame
from edge.cli.options import add_model_arguments, command_config, fail
from edge.runtime.backends import BackendUnavailable, InferenceBackend
from edge.runtime.bundle import BundleError, load_bundle
from edge.storage.store import Store

STAGES = ["decode", "gate", "detect", "second_look", "classify", "whole_frame", "embed", "store", "publish"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of one configuration (``trapedge bench`` passes them through)."""
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/frames"),
                        help="real frames to run on (default ../shared/data/frames)")
    parser.add_argument("--frames", type=int, default=120, help="frames per configuration (the folder repeats)")
    add_model_arguments(parser)


def percentile_ms(values: list[float], q: float) -> float:
    """The ``q``-th percentile of durations in seconds, in milliseconds."""
    return round(float(np.percentile(values, q)) * 1000, 2) if values else 0.0


def summarise(stage_times: dict[str, list[float]], wall: float, frames: int) -> dict[str, Any]:
    """fps, p50/p95 per stage (ms) and peak RSS (MB) of this process."""
    return {
        "frames": frames,
        "fps": round(frames / wall, 2),
        "stages_ms": {s: {"p50": percentile_ms(v, 50), "p95": percentile_ms(v, 95)} for s, v in stage_times.items() if v},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def decode_times(paths: list[Path]) -> list[float]:
    """Seconds ``read_frame`` takes for each file, measured on its own."""
    times = []
    for path in paths:
        start = time.perf_counter()
        read_frame(path, "bench", "decode", DEFAULT_MAX_SIDE)
        times.append(time.perf_counter() - start)
    return times


def run_worker(args: argparse.Namespace, backends: Mapping[str, InferenceBackend] | None = None) -> dict[str, Any]:
    """The service's pipeline (analyzer and recorder from the one factory) over ``args.frames`` frames.

    ``backends`` (task -> object with ``run(batch)``) replaces the inference of some models: the
    torch reference uses it so everything but the models is the same code.
    """
    config = command_config(args, args.folder)
    bundle = load_bundle(config.bundle.path)
    analyzer = build_analyzer(config, bundle, backends)
    paths = list_images(args.folder)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        recorder = build_recorder(config, store, analyzer, bundle)
        times: dict[str, list[float]] = {s: [] for s in STAGES}
        times["decode"] = decode_times(paths)  # in the run itself decoding overlaps the models
        jobs = ((paths[i % len(paths)], f"bench{i // len(paths)}", f"{i}") for i in range(args.frames))
        start = time.perf_counter()
        with ThreadPoolExecutor(1) as pool:
            for frame in read_ahead(pool, jobs, DEFAULT_MAX_SIDE):  # decoding overlaps, as in the service
                analysis = analyzer.process(frame)
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
        wall = time.perf_counter() - start
        store.close()
    result = summarise(times, wall, args.frames)
    result["torch_imported"] = "torch" in sys.modules
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
