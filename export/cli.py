"""``trapedge export``: build the default bundle from the pretrained weights (``make export``)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from common.signing import SIGNATURE_NAME, SignatureError
from edge.runtime.manifest import SAFE_NAME
from export.build import ExportOptions, TorchModels, build_bundle, manifest_summary
from export.calibration import ExportDataError, run_images
from export.gates import GateError
from export.model_card import add_camera_section
from export.signing import development_key_warning
from train.models.yolox import DEFAULT_SIZE, detector_input
from train.splits import StaleSplitError


def default_models(weights: Path) -> TorchModels:
    """The untrained bundle's models: camera-trap YOLOX-tiny, ImageNet EfficientNet-Lite0 twice."""
    from train.labels import DEFAULT_TAXONOMY
    from train.models.classifier import (
        ARCH,
        CROP_INPUT,
        ImageNetGroupClassifier,
        PooledEmbedder,
        create_backbone,
        freeze_same_padding,
    )
    from train.models.yolox import load_yolox
    from train.pretrained import path_of

    backbone = freeze_same_padding(create_backbone(path_of("efficientnet_lite0", weights)), CROP_INPUT.size)
    classifier = ImageNetGroupClassifier(backbone).eval()
    return TorchModels(
        detector=load_yolox(path_of("yolox_tiny_camera_trap", weights)),
        classifier=classifier,
        embedder=PooledEmbedder(backbone).eval(),
        detector_labels=["animal"],
        species_labels=classifier.labels,
        taxonomy={label: up for label, up in DEFAULT_TAXONOMY.items() if label in classifier.labels},
        architectures={"detector": "yolox_tiny", "classifier": f"{ARCH}+imagenet_groups", "embedder": f"{ARCH}+pool+l2"},
    )


def trained_models(run_dir: Path, weights: Path) -> TorchModels:
    """Models from ``trapedge train``: its classifier and embedder, and its detector when it kept a
    fine-tuned one (``detector.pt``), else the pretrained detector."""
    from train.models.classifier import CROP_INPUT, freeze_same_padding

    models = default_models(weights)
    if not (run_dir / "classifier.pt").is_file():
        raise FileNotFoundError(f"{run_dir / 'classifier.pt'} not found: train the species classifier first "
                                f"(`trapedge train --out {run_dir}` with species sources in its config)")
    classifier = torch.load(run_dir / "classifier.pt", map_location="cpu", weights_only=False).eval()
    freeze_same_padding(classifier.backbone, CROP_INPUT.size)
    models.classifier, models.species_labels = classifier, list(classifier.labels)
    trained_embedder = (run_dir / "embedder.pt").is_file()
    if trained_embedder:
        models.embedder = torch.load(run_dir / "embedder.pt", map_location="cpu", weights_only=False).eval()
        freeze_same_padding(models.embedder.backbone, CROP_INPUT.size)
    else:  # a run without individuals: the pretrained embedder, said once
        print(f"{run_dir} has no embedder.pt (no re-ID sources): the bundle keeps the pretrained embedder",
              file=sys.stderr)
    models.taxonomy = _run_taxonomy(run_dir, models.species_labels)
    models.whole_frames = _run_config(run_dir).get("crops", "boxes") != "detector"  # unboxed images: whole frames
    # plain names (the edge publishes ``<architecture>@<bundle version>``): the backbone and what was trained
    models.architectures["classifier"] = f"{_backbone_arch(classifier)}+species"
    if trained_embedder:
        models.architectures["embedder"] = f"{_backbone_arch(models.embedder)}+reid"
        models.embedder_learnt_identity = True
    if (run_dir / "detector.pt").is_file():
        saved = torch.load(run_dir / "detector.pt", map_location="cpu", weights_only=False)
        models.detector, models.detector_labels = saved["model"].eval(), list(saved["classes"])
        if saved.get("fine_tuned"):  # fine-tuned at its own input size, which is then its native one
            models.detector_native_size = tuple(saved.get("input_size", DEFAULT_SIZE))
        models.architectures["detector"] = "yolox_tiny+fine-tuned" if saved.get("fine_tuned") else "yolox_tiny"
    return models


def _backbone_arch(model: torch.nn.Module) -> str:
    """The timm architecture under a trained model (``tf_efficientnet_lite0``)."""
    from train.models.classifier import ARCH

    return getattr(model.backbone, "pretrained_cfg", {}).get("architecture") or ARCH


def _run_taxonomy(run_dir: Path, labels: list[str]) -> dict[str, list[str]]:
    """The training config's taxonomy for the classifier's labels (none when the run has no config)."""
    taxonomy = _run_config(run_dir).get("taxonomy", {})
    return {label: list(up) for label, up in taxonomy.items() if label in labels}


def _run_config(run_dir: Path) -> dict:
    """The run's saved training config (empty when it has none)."""
    import json

    path = run_dir / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _trained_size(run_dir: Path) -> tuple[int, int] | None:
    """The input size a run's fine-tuned detector was trained at (None: it kept the pretrained one)."""
    path = run_dir / "detector.pt"
    if not path.is_file():
        return None
    saved = torch.load(path, map_location="cpu", weights_only=False)
    return tuple(saved["input_size"]) if saved.get("fine_tuned") and saved.get("input_size") else None


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
        detector_input((h, w))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW in multiples of 32, e.g. 480x640 ({exc})") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("bundles/default"), help="bundle directory to write")
    parser.add_argument("--weights", type=Path, default=Path("models"), help="where `make models` put the weights")
    parser.add_argument("--data", type=Path, default=Path("../shared/data"),
                        help="real images that calibrate and check the default bundle; a --trained run uses its own "
                             "train and val splits instead")
    parser.add_argument("--threshold", type=float, default=0.25, help="detector confidence threshold for the manifest")
    parser.add_argument("--detector-size", type=_size, default=None, metavar="HxW",
                        help="detector input (default 480x640: 4:3 frames without padding rows; 640x640 is native; "
                             "a fine-tuned detector: the size it was trained at)")
    parser.add_argument("--trained", type=Path,
                        help="a `trapedge train` output folder to export instead of the pretrained models")
    parser.add_argument("--calibration", choices=["minmax", "percentile", "entropy"],
                        help="calibration method for all three models (default: per model, see export.build)")
    parser.add_argument("--signing-key", type=Path, default=None, metavar="KEY",
                        help="Ed25519 private key that signs the manifest (`python -m export.signing keygen KEY` makes "
                             "one); default: the checkout's development key, which only the default edge config trusts")


def run(args: argparse.Namespace) -> int:
    if not re.fullmatch(SAFE_NAME, args.out.name):
        print(f"export refused: the bundle is named after --out, and {args.out.name!r} is not a safe name "
              "(letters, digits, '.', '_', '-'; no leading dot)", file=sys.stderr)
        return 2
    if args.signing_key is None:
        print(development_key_warning(), file=sys.stderr)
    size = args.detector_size or (_trained_size(args.trained) if args.trained else None) or DEFAULT_SIZE
    options = ExportOptions(out=args.out, data=args.data, name=args.out.name, detector_threshold=args.threshold,
                            detector_size=size, signing_key=args.signing_key)
    if args.calibration:
        options.calibration = dict.fromkeys(options.calibration, args.calibration)
    if args.trained and (args.trained / "splits").is_dir():
        from train.heldout import evaluate_held_out

        def held_out(bundle: Path) -> dict[str, object]:
            print("held-out images through the bundle's INT8 pipeline (trapedge evaluate, per source)")
            return evaluate_held_out(bundle, args.trained)

        options.evaluate = held_out
    try:
        if args.trained:
            options.images = run_images(args.trained)
        if options.evaluate is not None:
            from train.heldout import held_out_sets

            held_out_sets(args.trained)  # a split the data no longer matches refuses now, not after the build
        models = trained_models(args.trained, args.weights) if args.trained else default_models(args.weights)
        manifest = build_bundle(models, options)
    except (ExportDataError, StaleSplitError) as exc:  # a run whose data changed under its saved splits
        print(f"export refused: {exc}", file=sys.stderr)
        return 2
    except (GateError, FileNotFoundError, SignatureError) as exc:
        print(f"export failed, no bundle written: {exc}", file=sys.stderr)
        return 2
    print(manifest_summary(manifest, args.out))
    print(f"signed: {args.out / SIGNATURE_NAME}" + (" with the DEVELOPMENT key" if args.signing_key is None else ""))
    if manifest.evaluation:
        report = args.trained / "report" / "report.md"
        add_camera_section(report, manifest.evaluation, str(args.out))
        print(f"what the camera does on held-out images: {args.out / 'MODEL_CARD.md'} (and at the top of {report})")
    return 0
