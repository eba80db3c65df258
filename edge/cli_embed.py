"""``trapedge embed DIR --bundle B --output out.jsonl [--crop best|whole]``: one embedding per image.

``best`` embeds the crop of the highest-scoring detection (images with none get a failure
line); ``whole`` embeds the whole image.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from edge.capture.decode import DEFAULT_MAX_SIDE, ImageDecodeError, decode_image, list_images
from edge.runtime.backends import BackendUnavailable
from edge.cli_models import add_model_arguments, open_models
from edge.runtime.bundle import BundleError
from edge.runtime.models import Detector, Embedder



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="JSON lines file to write")
    parser.add_argument("--crop", choices=["best", "whole"], default="best")
    add_model_arguments(parser)


def embed_one(path: Path, root: Path, embedder: Embedder, detector: Detector | None) -> dict:
    """The output line for one image: its embedding (and box) or a failure."""
    line: dict = {"file": path.relative_to(root).as_posix()}
    try:
        rgb = decode_image(path, max_side=DEFAULT_MAX_SIDE).rgb
    except ImageDecodeError as exc:
        return {**line, "failure": f"image unreadable: {exc}"}
    if detector is None:
        vector = embedder.run_crops([embedder.whole(rgb)])[0]
    else:
        detections = detector.detect(rgb)
        if not len(detections):
            return {**line, "failure": "no detection"}
        best = detections[int(detections.confidence.argmax())]
        vector = embedder.embed(rgb, best).data["embedding"][0]
        h, w = rgb.shape[:2]
        line["bbox_xyxy"] = [round(float(v), 4) for v in best.xyxy[0] / [w, h, w, h]]
        line["conf"] = round(float(best.confidence[0]), 4)
    return {**line, "embedding": [round(float(v), 6) for v in vector]}


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"trapedge embed: {args.folder} is not a folder", file=sys.stderr)
        return 2
    try:
        bundle, (embedder, *rest) = open_models(args, Embedder, *([Detector] if args.crop == "best" else []))
        detector = rest[0] if rest else None
    except (BundleError, BackendUnavailable, FileNotFoundError) as exc:
        print(f"trapedge embed: {exc}", file=sys.stderr)
        return 2
    spec = bundle.spec("embedder")
    lines = [embed_one(p, args.folder, embedder, detector) for p in tqdm(list_images(args.folder), desc="embed", disable=None)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w") as out:
        for line in lines:
            out.write(json.dumps({**line, "model": spec.architecture, "bundle_version": bundle.manifest.version}) + "\n")
    failed = sum("failure" in line for line in lines)
    print(f"{len(lines)} images, {len(lines) - failed} embeddings, {failed} failed -> {args.output}")
    return 1 if lines and failed == len(lines) else 0
