"""``trapedge detect DIR --bundle B --output results.json``: MegaDetector batch output for a folder.

The pipeline is the service's own (``edge.app.factory.build_analyzer``): the same info-bar trim,
labels and failure handling; only the source (every image under DIR, once) and the sink (one
MegaDetector JSON file) differ. The motion gate is off: a batch looks at every image. Exit 0 when
some images fail (each becomes a ``failure`` entry); non-zero only when nothing could run.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common.config_loader import ConfigError
from common.progress import progress
from edge.analysis.analyzer import Analyzer, FrameFailure
from edge.app.factory import build_analyzer
from edge.capture.decode import DEFAULT_MAX_SIDE, list_images, read_ahead
from edge.cli.options import add_model_arguments, command_config, fail
from edge.runtime.backends import BackendUnavailable
from edge.runtime.bundle import BundleError, load_bundle
from edge.wire.megadetector import ImageResult, batch_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="MegaDetector JSON to write")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, help="lowest confidence written (default: manifest's)")
    parser.add_argument("--no-classify", action="store_true", help="skip the species classifier")


def analyse_folder(analyzer: Analyzer, root: Path, paths: list[Path]) -> list[ImageResult]:
    """Each image under ``root`` through the analyzer, decoded one ahead, its progress shown (count, rate, ETA)."""
    results = []
    jobs = ((path, "images", path.relative_to(root).as_posix()) for path in paths)
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        frames = read_ahead(pool, jobs, DEFAULT_MAX_SIDE)
        for frame in progress(frames, total=len(paths), desc="detect", unit="image"):
            result = analyzer.process(frame)
            if isinstance(result, FrameFailure):
                results.append(ImageResult(frame.key, failure=result.reason))
            else:
                results.append(ImageResult(frame.key, result.detections, result.rgb.shape[:2]))
    return results


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        return fail("detect", f"{args.folder} is not a folder")
    overrides = {"gate": {"enabled": False}, "detection": {"confidence": args.threshold, "embed": False,
                                                           "classify": not args.no_classify}}
    try:
        config = command_config(args, args.folder, **overrides)
        bundle = load_bundle(config.bundle.path)
        analyzer = build_analyzer(config, bundle)
    except (ConfigError, BundleError, BackendUnavailable, FileNotFoundError) as exc:
        return fail("detect", exc)
    results = analyse_folder(analyzer, args.folder, list_images(args.folder))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = batch_output(results, bundle.manifest, config.bundle.precision, analyzer.classifier is not None)
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    failed = sum(r.failure is not None for r in results)
    boxes = sum(len(r.detections) for r in results if r.detections is not None)
    print(f"{len(results)} images, {boxes} detections, {failed} failed -> {args.output}")
    if results and failed == len(results):
        fail("detect", "no image could be processed")
        return 1
    return 0
