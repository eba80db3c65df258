"""``trapedge detect DIR --bundle B --output results.json``: MegaDetector batch output for a folder.

Every image under DIR is processed once; one that cannot be read becomes a ``failure`` entry
and the run goes on. Exit 0 when some images fail; non-zero only when nothing could run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from edge.capture.decode import DEFAULT_MAX_SIDE, ImageDecodeError, decode_image, list_images
from edge.megadetector import ImageResult, batch_output
from edge.runtime.backends import BackendUnavailable
from edge.cli_models import add_model_arguments, open_models
from edge.runtime.bundle import BundleError
from edge.runtime.models import Classifier, Detector



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="folder of images (searched recursively)")
    parser.add_argument("--output", type=Path, required=True, help="MegaDetector JSON to write")
    add_model_arguments(parser)
    parser.add_argument("--threshold", type=float, help="lowest confidence written (default: manifest's)")
    parser.add_argument("--no-classify", action="store_true", help="skip the species classifier")


def process(path: Path, root: Path, detector: Detector, classifier: Classifier | None, threshold: float | None) -> ImageResult:
    """Detect (and classify) one image; decoding problems become a failure result."""
    rel = path.relative_to(root).as_posix()
    try:
        image = decode_image(path, max_side=DEFAULT_MAX_SIDE)
    except ImageDecodeError as exc:
        return ImageResult(rel, failure=f"image unreadable: {exc}")
    detections = detector.detect(image.rgb, threshold)
    if classifier is not None and len(detections):
        detections = classifier.classify(image.rgb, detections)
    return ImageResult(rel, detections, image.rgb.shape[:2])


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        print(f"trapedge detect: {args.folder} is not a folder", file=sys.stderr)
        return 2
    try:
        bundle, (detector, *rest) = open_models(args, Detector, *([] if args.no_classify else [Classifier]))
        classifier = rest[0] if rest else None
    except (BundleError, BackendUnavailable, FileNotFoundError) as exc:
        print(f"trapedge detect: {exc}", file=sys.stderr)
        return 2
    paths = list_images(args.folder)
    results = [process(p, args.folder, detector, classifier, args.threshold)
               for p in tqdm(paths, desc="detect", unit="img", disable=None)]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    document = batch_output(results, bundle.manifest, args.precision, classifier is not None)
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    failed = sum(r.failure is not None for r in results)
    boxes = sum(len(r.detections) for r in results if r.detections is not None)
    print(f"{len(results)} images, {boxes} detections, {failed} failed -> {args.output}")
    if results and failed == len(results):
        print("trapedge detect: no image could be processed", file=sys.stderr)
        return 1
    return 0
