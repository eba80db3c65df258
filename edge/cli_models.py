"""Model options shared by the edge commands (bundle, precision, backend, threads)."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.runtime.backends import config_class
from edge.runtime.bundle import Bundle, load_bundle


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--bundle``, ``--precision``, ``--backend`` and ``--threads``."""
    parser.add_argument("--bundle", type=Path, default=Path("bundles/default"), help="model bundle directory")
    parser.add_argument("--precision", choices=["int8", "fp32"], default="int8")
    parser.add_argument("--backend", default="onnxruntime", help="inference backend (onnxruntime, tensorrt)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads (0 = all cores)")


def open_models(args: argparse.Namespace, *model_classes) -> tuple[Bundle, list]:
    """Verify the bundle and build each requested model class on the chosen backend.

    Raises:
        BundleError, BackendUnavailable, FileNotFoundError: for the caller to report.
    """
    bundle = load_bundle(args.bundle)
    config = config_class(args.backend)(threads=args.threads) if args.backend == "onnxruntime" else None
    return bundle, [cls(bundle, args.precision, args.backend, config) for cls in model_classes]
