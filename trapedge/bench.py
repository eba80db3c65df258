"""``trapedge bench``: end-to-end throughput, CPU per frame and per-stage latency on real frames.

Each configuration runs in its own process, so peak RSS is that configuration's alone: the edge
pipeline with INT8 and with fp32 models (``edge.cli.bench``), an older bundle's INT8 when
``--baseline`` names one, and — when the training extra is installed — a torch eager reference of
the same models (``export.torch_reference``). Every configuration runs on each set of frames (the
shared frames, and frames with many animals); every figure and ratio comes from this one run, on
the machine the report names.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge.cli.argtypes import at_least
from edge.runtime.machine import AUTO_MIN_MEMORY_MB, auto_frames_at_once

MANY_ANIMALS = Path("../shared/data/boxes/wbia_voc/JPEGImages")
ONE_FRAME = "int8 1 frame"  # INT8 with frames_at_once 1, run beside the default when that is more
TORCH_FRAMES = 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/frames"),
                        help="real frames to run on (default ../shared/data/frames)")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--many", type=Path, default=MANY_ANIMALS,
                        help=f"a second set: frames with many animals (default {MANY_ANIMALS}; 'none' to skip)")
    parser.add_argument("--baseline", type=Path, help="an older bundle, run as INT8 beside this one")
    parser.add_argument("--frames", type=at_least(1), default=120,
                        help="frames per configuration and for the service's full-rate runs (the folder repeats)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch eager reference")
    parser.add_argument("--latency", action="store_true",
                        help="only the service itself (local Mosquitto, edge/cli/latency.py): file closed → "
                        "alert received, then its peak RSS and frames/s on --frames files written at once")
    parser.add_argument("--no-latency", action="store_true",
                        help="skip the service's own part (alert latency, its peak RSS and frames/s)")
    parser.add_argument("--alerts", type=at_least(1), default=100, help="alerts timed by --latency")


class ConfigurationFailed(RuntimeError):
    """A configuration's process could not run; the message is its last line of error output."""


def _child(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit status {out.returncode}"]
        raise ConfigurationFailed(lines[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None and importlib.util.find_spec("export") is not None


def run(args: argparse.Namespace) -> int:
    if args.latency:
        from edge.cli import latency

        return latency.run(args)
    sets = {"shared frames": args.folder}
    if args.many is not None and str(args.many) != "none" and args.many.is_dir():
        sets["many animals"] = args.many
    configs: dict[str, tuple[Path, str, list[str]]] = {"int8": (args.bundle, "int8", []),
                                                         "fp32": (args.bundle, "fp32", [])}
    if auto_frames_at_once() > 1:  # what a device with less memory (a 512 MB Pi Zero 2 W) runs
        configs[ONE_FRAME] = (args.bundle, "int8", ["--frames-at-once", "1"])
    if args.baseline is not None:
        configs["baseline int8"] = (args.baseline, "int8", [])
    results: dict[str, Any] = {"machine": machine(), "frames_per_configuration": args.frames, "sets": {}}
    try:
        for name, folder in sets.items():
            common = [str(folder), "--frames", str(args.frames), "--threads", str(args.threads)]
            runs = {config: _child([sys.executable, "-m", "edge.cli.bench", *common, "--bundle", str(bundle),
                                    "--precision", precision, *extra])
                    for config, (bundle, precision, extra) in configs.items()}
            if not args.no_torch and _torch_available():  # eager torch is slow: fewer frames, enough for its rate
                torch_common = [str(folder), "--frames", str(min(args.frames, TORCH_FRAMES)), "--threads", str(args.threads)]
                runs["torch"] = _child([sys.executable, "-m", "export.torch_reference", *torch_common, "--bundle",
                                        str(args.bundle), "--no-costs"])
            results["sets"][name] = {"folder": str(folder), "configurations": runs}
    except ConfigurationFailed as exc:
        print(f"trapedge bench: {str(exc).removeprefix('trapedge bench: ')}", file=sys.stderr)
        return 2
    if not args.no_latency:
        from edge.cli import latency

        try:
            results["latency"] = latency.bench(args.bundle, args.folder, args.alerts, args.frames)
        except (latency.LatencyError, latency.BrokerMissing) as exc:
            results["latency"] = {"skipped": str(exc)}
    report(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith(("model name", "Model"))), "")
    except OSError:
        pass
    versions = {}
    for package, distribution in (("onnxruntime", "onnxruntime"), ("numpy", "numpy"), ("PIL", "pillow")):
        try:  # read from the installed metadata: importing ONNX Runtime here would map it into this process
            versions[package] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"arch": platform.machine(), "cpu": model or platform.processor(), "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version(), **versions}


def report(results: dict[str, Any]) -> None:
    """Print the tables and the ratios."""
    m = results["machine"]
    print(f"machine: {m['arch']}, {m['cores']} cores ({m['cpu']}), {m['system']}, Python {m['python']}, "
          f"onnxruntime {m.get('onnxruntime', '-')}; {results['frames_per_configuration']} frames per configuration")
    for name, one in results["sets"].items():
        runs = one["configurations"]
        print(f"\n{name} ({one['folder']})")
        names = list(dict.fromkeys(stage for r in runs.values() for stage in r["stages_ms"]))  # the workers' order
        print(f"{'config':<14}{'fps':>7}{'CPU s/frame':>13}{'rss MB':>8}  " + "  ".join(f"{s:>15}" for s in names))
        for config, r in runs.items():
            stages = [r["stages_ms"].get(s, {}) for s in names]
            cells = "  ".join(f"{st.get('p50', 0):>6.1f}/{st.get('p95', 0):>6.1f}ms" for st in stages)
            print(f"{config:<14}{r['fps']:>7.2f}{r['cpu_s_per_frame']:>13.3f}{r['peak_rss_mb']:>8.1f}  {cells}")
        print("(stage cells: wall p50/p95; CPU is user + system time of the process, every thread)")
        int8 = runs["int8"]
        for other in ("fp32", ONE_FRAME, "baseline int8", "torch"):
            if other in runs:
                print(f"INT8 / {other}: {int8['fps'] / runs[other]['fps']:.2f}x frames/s, "
                      f"{int8['cpu_s_per_frame'] / runs[other]['cpu_s_per_frame']:.2f}x CPU per frame, "
                      f"{int8['peak_rss_mb'] - runs[other]['peak_rss_mb']:+.0f} MB peak RSS")
        for config, r in runs.items():
            if "cpu_ms" in r:
                _costs(config, r)
    latency = results.get("latency")
    if latency:
        print()
        if "skipped" in latency:
            print(f"alert latency not measured: {latency['skipped']}")
        else:
            from edge.cli.latency import report as latency_report

            latency_report(latency)
    _targets(results)


def _targets(results: dict[str, Any]) -> None:
    """The figures the appliance is held to, from this run."""
    sets = results["sets"]
    int8 = {name: one["configurations"]["int8"] for name, one in sets.items()}
    at_once = {r.get("frames_at_once", 1) for r in int8.values()}
    print(f"\nsummary (this run; frames at once: {' / '.join(str(n) for n in sorted(at_once))})")
    fps = " / ".join(f"{r['fps']:.1f}" for r in int8.values())
    print(f"  INT8 frames/s ({' / '.join(sets)}): {fps}")
    cpu = " / ".join(f"{r['cpu_s_per_frame']:.3f}" for r in int8.values())
    print(f"  INT8 CPU s per frame: {cpu}")
    print(f"  peak RSS, INT8 pipeline: {max(r['peak_rss_mb'] for r in int8.values()):.0f} MB")
    for run in (results.get("latency") or {}).get("service_full_rate", []):
        if run["peak_rss_mb"] is not None:
            print(f"  the service itself (trapedge run, {run['frames_at_once']} frame(s) at once, {run['frames']} shared "
                  f"frames written at once): peak RSS {run['peak_rss_mb']:.0f} MB (start-up included), "
                  f"{run['fps']:.1f} frames/s")
    one = [one["configurations"][ONE_FRAME] for one in sets.values() if ONE_FRAME in one["configurations"]]
    if one:
        rates = " / ".join(f"{r['fps']:.1f}" for r in one)
        costs = " / ".join(f"{r['cpu_s_per_frame']:.3f}" for r in one)
        print(f"  INT8, one frame at a time (a device under {AUTO_MIN_MEMORY_MB} MB): frames/s {rates}, CPU s per "
              f"frame {costs}, peak RSS {max(r['peak_rss_mb'] for r in one):.0f} MB")
    ratios = " / ".join(f"{one['configurations']['int8']['fps'] / one['configurations']['fp32']['fps']:.2f}x"
                        for one in sets.values())
    print(f"  INT8 vs fp32 frames/s: {ratios}")
    latency = results.get("latency") or {}
    if "latency_ms" in latency:
        received = latency["latency_ms"]["received"]
        print(f"  file closed -> alert delivered: p50 {received['p50']:.0f} ms, p95 {received['p95']:.0f} ms "
              f"({latency['alerts']} alerts)")


def _costs(config: str, r: dict[str, Any]) -> None:
    stages = "  ".join(f"{stage} {ms:.1f}" for stage, ms in r["cpu_ms"].items())
    print(f"{config} CPU ms per stage, one frame at a time: {stages}")
    gated = r["gated"]
    print(f"{config} empty frame rejected by the motion gate (decode included): {gated['cpu_ms']:.1f} ms CPU, "
          f"{gated['wall_ms']:.1f} ms wall ({gated['gated']} gated)")
    if r.get("crops"):
        cells = "  ".join(f"{n}: {c['batched_cpu_ms']:.0f}/{c['one_by_one_cpu_ms']:.0f}" for n, c in r["crops"].items())
        print(f"{config} classify CPU ms by animals in the frame (batched/one by one): {cells}")
    bursts = "  ".join(f"{n}: {ms:.0f}" for n, ms in r["bursts_cpu_ms_per_frame"].items())
    print(f"{config} CPU ms per frame by burst length (decode, models, events, store): {bursts}")
