"""``trapedge bench``: end-to-end throughput and per-stage latency on real frames.

Each configuration runs in its own process, so peak RSS is that configuration's alone: the edge
pipeline with INT8 and with fp32 models (``edge.cli.bench``), and — when the training extra is
installed — a torch eager reference of the same models (``export.torch_reference``). Ratios come
from one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge.cli.bench import STAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/frames"),
                        help="real frames to run on (default ../shared/data/frames)")
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"))
    parser.add_argument("--frames", type=int, default=120, help="frames per configuration (the folder repeats)")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch eager reference")


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
    common = [str(args.folder), "--bundle", str(args.bundle), "--frames", str(args.frames), "--threads", str(args.threads)]
    try:
        results = {precision: _child([sys.executable, "-m", "edge.cli.bench", *common, "--precision", precision])
                   for precision in ("int8", "fp32")}
        if not args.no_torch and _torch_available():
            results["torch"] = _child([sys.executable, "-m", "export.torch_reference", *common])
    except ConfigurationFailed as exc:
        print(f"trapedge bench: {str(exc).removeprefix('trapedge bench: ')}", file=sys.stderr)
        return 2
    report(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


def report(results: dict[str, dict[str, Any]]) -> None:
    """Print the table and the ratios."""
    print(f"{'config':<8}{'fps':>8}{'rss MB':>9}  " + "  ".join(f"{s:>15}" for s in STAGES))
    for name, r in results.items():
        stages = [r["stages_ms"].get(s, {}) for s in STAGES]
        cells = "  ".join(f"{st.get('p50', 0):>6.1f}/{st.get('p95', 0):>6.1f}ms" for st in stages)
        print(f"{name:<8}{r['fps']:>8.2f}{r['peak_rss_mb']:>9.1f}  {cells}")
    print("(stage cells: p50/p95)")
    int8 = results["int8"]["fps"]
    for other in ("fp32", "torch"):
        if other in results:
            print(f"INT8 / {other}: {int8 / results[other]['fps']:.2f}x frames/s")
