"""``trapedge bench``: end-to-end throughput and per-stage latency on real frames.

Each configuration runs in its own process, so peak RSS is that configuration's alone:
the edge pipeline with INT8 and with fp32 models, and — when torch is installed — a torch
eager reference of the same models (``export.torch_reference``). Ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge.capture.decode import DEFAULT_MAX_SIDE, list_images, read_ahead, read_frame
from edge.events import BurstConfig
from edge.gate import MotionGate, MotionGateConfig
from edge.pipeline import Analyzer, DetectionConfig, PreprocessConfig, PrivacyConfig
from edge.recorder import AlertConfig, Identity, Recorder
from edge.rules import RulesConfig
from edge.runtime.backends import config_class
from edge.runtime.bundle import load_bundle
from edge.runtime.models import Classifier, Detector, Embedder
from edge.store import Store

STAGES = ["decode", "gate", "detect", "classify", "embed", "store", "publish"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/frames"),
                        help="real frames to run on (default ../shared/data/frames)")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--frames", type=int, default=120, help="frames per configuration (the folder repeats)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--worker", choices=["int8", "fp32"], help=argparse.SUPPRESS)
    parser.add_argument("--no-torch", action="store_true", help="skip the torch eager reference")


def percentile_ms(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)) * 1000, 2) if values else 0.0


def summarise(stage_times: dict[str, list[float]], wall: float, frames: int) -> dict:
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


def run_worker(args: argparse.Namespace, backends: dict | None = None) -> dict:
    """The edge pipeline at one precision over ``args.frames`` frames, as the service runs it.

    ``backends`` (task -> object with ``run(batch)``) replaces the inference of some models:
    the torch reference uses it so everything but the models is the same code.
    """
    bundle = load_bundle(args.bundle)
    backend = config_class("onnxruntime")(threads=args.threads)
    models = [cls(bundle, args.worker, "onnxruntime", backend) for cls in (Detector, Classifier, Embedder)]
    for model in models:
        model.backend = (backends or {}).get(model.task, model.backend)
    bursts = BurstConfig()
    analyzer = Analyzer(*models, MotionGate(MotionGateConfig()), PreprocessConfig(), DetectionConfig(),
                        PrivacyConfig(), bursts.min_crop_confidence)
    paths = list_images(args.folder)
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "bench.db")
        identity = Identity("bench", None, "trapedge", "embedder", bundle.manifest.version)
        recorder = Recorder(store, identity, bursts, RulesConfig(), AlertConfig(), PrivacyConfig(),
                            bundle.spec("classifier").labels)
        times: dict[str, list[float]] = {s: [] for s in STAGES}
        times["decode"] = decode_times(paths)  # in the run itself decoding overlaps the models
        jobs = ((paths[i % len(paths)], f"bench{i // len(paths)}", f"{i}") for i in range(args.frames))
        start = time.perf_counter()
        pool = ThreadPoolExecutor(1)
        for frame in read_ahead(pool, jobs, DEFAULT_MAX_SIDE):  # decoding overlaps, as in the service
            if not frame.ok:
                continue
            analysis = analyzer.analyse(frame)
            for stage, seconds in analysis.timings.items():
                times[stage].append(seconds)
            t0 = time.perf_counter()
            recorder.record(analysis)
            times["store"].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            store.outbox.pending(limit=100)  # what the publisher reads per drain
            times["publish"].append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
        pool.shutdown()
        store.close()
    result = summarise(times, wall, args.frames)
    result["torch_imported"] = "torch" in sys.modules
    return result


def _child(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("export") is not None


def run(args: argparse.Namespace) -> int:
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    common = [str(args.folder), "--bundle", str(args.bundle), "--frames", str(args.frames), "--threads", str(args.threads)]
    results = {}
    for precision in ("int8", "fp32"):
        results[precision] = _child([sys.executable, "-m", "trapedge.cli", "bench", *common, "--worker", precision])
    if not args.no_torch and _torch_available():
        results["torch"] = _child([sys.executable, "-m", "export.torch_reference", *common])
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(results: dict) -> None:
    """Print the table and the ratios."""
    print(f"{'config':<8}{'fps':>8}{'rss MB':>9}  " + "  ".join(f"{s:>15}" for s in STAGES))
    for name, r in results.items():
        cells = "  ".join(f"{r['stages_ms'].get(s, {}).get('p50', 0):>6.1f}/{r['stages_ms'].get(s, {}).get('p95', 0):>6.1f}ms"
                          for s in STAGES)
        print(f"{name:<8}{r['fps']:>8.2f}{r['peak_rss_mb']:>9.1f}  {cells}")
    print("(stage cells: p50/p95)")
    int8 = results["int8"]["fps"]
    for other in ("fp32", "torch"):
        if other in results:
            print(f"INT8 / {other}: {int8 / results[other]['fps']:.2f}x frames/s")
