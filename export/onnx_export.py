"""torch → ONNX fp32, with a dynamic batch axis and stable node names."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

OPSET = 17


def export_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path, output_names: str | list[str],
                dynamic_size: bool = False) -> Path:
    """Write ``model`` as ONNX with input ``images`` (dynamic batch) and the named outputs.

    Uses the TorchScript exporter: its node names (``/head/cls_preds.0/Conv``) are what
    ``export.quantize`` uses to keep heads in fp32. ``dynamic_size``: the input's height and width are
    free too, and so is the outputs' second axis (a detector's anchors), for a canvas fitted to the frame.
    """
    names = [output_names] if isinstance(output_names, str) else list(output_names)
    image_axes, output_axes = ({0: "batch", 2: "height", 3: "width"}, {0: "batch", 1: "anchors"}) if dynamic_size \
        else ({0: "batch"}, {0: "batch"})
    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path),
            input_names=["images"], output_names=names,
            dynamic_axes={"images": image_axes, **{name: output_axes for name in names}},
            opset_version=OPSET, dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def torch_vs_onnx(model: torch.nn.Module, path: Path, batch: np.ndarray) -> list[tuple[float, float]]:
    """(max absolute difference, max absolute torch value) between torch eager and ONNX Runtime fp32 on one
    real batch, per output."""
    with torch.no_grad():
        expected = model(torch.from_numpy(batch))
    expected = expected if isinstance(expected, tuple) else (expected,)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {"images": batch})
    pairs = [(e.numpy(), a) for e, a in zip(expected, actual, strict=True)]
    return [(float(np.abs(e - a).max()), float(np.abs(e).max())) for e, a in pairs]
