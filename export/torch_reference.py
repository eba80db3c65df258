"""The torch eager reference for ``trapedge bench``: the edge pipeline with torch models swapped in.

Everything but the inference backend is the edge's own code, so the ratio measures the models.
``python -m export.torch_reference FOLDER --bundle B --frames N`` prints one JSON line, as
``python -m edge.cli.bench`` does for the ONNX configurations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from edge.cli import bench
from edge.cli.options import DEFAULT_BUNDLE
from edge.runtime.bundle import load_bundle
from export.cli import default_models
from train.models.classifier import SharedCropModel


class TorchBackend:
    """Runs a torch module where the edge expects an inference backend."""

    input_dtype = np.float32

    def __init__(self, module: torch.nn.Module):
        self.module = module.eval()

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(batch))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    bench.add_arguments(parser)
    parser.add_argument("--weights", type=Path, default=Path("models"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.precision = "fp32"
    modules = default_models(args.weights)
    backends = {"detector": TorchBackend(modules.detector)}
    # the bundle runs classifier and embedder in one backbone pass: so does torch
    if load_bundle(args.bundle or DEFAULT_BUNDLE).spec("classifier").result:
        backends["classifier"] = backends["embedder"] = TorchBackend(SharedCropModel(modules.classifier, modules.embedder))
    else:
        backends.update(classifier=TorchBackend(modules.classifier), embedder=TorchBackend(modules.embedder))
    print(json.dumps(bench.run_worker(args, backends)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
