"""``trapedge embed DIR --bundle B --output out.jsonl [--crop best|whole]``: one embedding per image.

``best`` runs the service's own pipeline (``edge.app.factory.build_analyzer``) and writes the
embedding of the highest-scoring box the privacy rules let it embed (an image with none gets a
failure line saying why); ``whole`` embeds the whole image with the bundle's embedder.
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from common.config_loader import ConfigError
from common.progress import progress
from edge.analysis.analyzer import Analyzer, FrameAnalysis, FrameFailure
from edge.app.factory import build_analyzer
from edge.capture.decode import DEFAULT_MAX_SIDE, list_images, read_ahead
from edge.capture.frame import Frame
from edge.cli.options import add_model_arguments, command_config, fail, failure_lines
from edge.runtime.backends import BackendUnavailable
from edge.runtime.bundle import BundleError, load_bundle


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="JSON lines file to write")
    parser.add_argument("--crop", choices=["best", "whole"], default="best")
    add_model_arguments(parser)


def best_box(analysis: FrameAnalysis) -> dict[str, Any]:
    """The output fields of an analysed image: its best embedded box, or a failure saying why there is none."""
    det = analysis.detections
    if not len(det):
        return {"failure": "no detection"}
    embedded = det[det.data["embedded"]]
    if not len(embedded):
        return {"failure": f"no box may be embedded (labels: {', '.join(sorted(set(det.labels())))})"}
    best = embedded[int(embedded.confidence.argmax())]
    h, w = analysis.rgb.shape[:2]
    return {"bbox_xyxy": [round(float(v), 4) for v in best.xyxy[0] / [w, h, w, h]],
            "conf": round(float(best.confidence[0]), 4), "label": best.labels()[0],
            "embedding": [round(float(v), 6) for v in best.data["embedding"][0]]}


def whole_image(analyzer: Analyzer, frame: Frame) -> dict[str, Any]:
    """The output fields of one image embedded whole."""
    assert analyzer.embedder is not None
    vector = analyzer.embedder.run_crops([analyzer.embedder.whole(frame.pixels)])[0]
    return {"embedding": [round(float(v), 6) for v in vector]}


def embed_line(analyzer: Analyzer, frame: Frame, crop: str) -> dict[str, Any]:
    """The output line of one image (without the model fields)."""
    line: dict[str, Any] = {"file": frame.key}
    if crop == "whole":
        return {**line, **(whole_image(analyzer, frame) if frame.ok else {"failure": f"image unreadable: {frame.failure}"})}
    result = analyzer.process(frame)
    if isinstance(result, FrameFailure):
        return {**line, "failure": result.reason}
    return {**line, **best_box(result)}


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        return fail("embed", f"{args.folder} is not a folder")
    try:
        config = command_config(args, args.folder, gate={"enabled": False})
        bundle = load_bundle(config.bundle.path)
        analyzer = build_analyzer(config, bundle)
    except (ConfigError, BundleError, BackendUnavailable, FileNotFoundError) as exc:
        return fail("embed", exc)
    if analyzer.embedder is None:
        return fail("embed", "detection.embed is off in the config: nothing to embed")
    paths = list_images(args.folder)
    model = {"model": bundle.spec("embedder").architecture, "bundle_version": bundle.manifest.version}
    jobs = ((path, "images", path.relative_to(args.folder).as_posix()) for path in paths)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    failures: list[tuple[str, str]] = []
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool, open(args.output, "w") as out:
        frames = read_ahead(pool, jobs, DEFAULT_MAX_SIDE)
        for frame in progress(frames, total=len(paths), desc="embed", unit="image"):
            line = embed_line(analyzer, frame, args.crop)
            if "failure" in line:
                failures.append((line["file"], line["failure"]))
            out.write(json.dumps({**line, **model}) + "\n")
    failed = len(failures)
    print(f"{len(paths)} images, {len(paths) - failed} embeddings, {failed} failed -> {args.output}")
    for said in failure_lines(failures, str(args.output)):
        print(said)
    return 1 if paths and failed == len(paths) else 0
