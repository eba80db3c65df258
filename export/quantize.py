"""Static INT8 quantization (QDQ, uint8 activations / int8 per-channel weights) with ONNX Runtime.

U8S8 is the format that runs faster than fp32 on ORT's CPU kernels (S8S8 does not). Heads stay
fp32: quantizing a classifier's final layer ties its logits, and quantizing a detector's
prediction convs and reshapes zeroes scores.

A graph that takes raw pixels (the detector: 0-255, no mean or std) is calibrated to an input scale
of exactly 1 and zero point 0, so its first QuantizeLinear maps each pixel to itself: ``take_pixels``
drops it and gives the graph a uint8 input. The edge then hands it the letterboxed pixels as they are,
with no float32 copy (3.7 MB a 480 x 640 frame in flight, 4x its pixels) and bit-identical outputs.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

# Node-name patterns kept in fp32, per task (names from the TorchScript exporter).
FP32_NODES = {
    # prediction convs and reshapes; and the last box-regression conv (its activation at stride 8):
    # INT8 boxes then overlap fp32's at IoU 0.98 instead of 0.88 for +1 ms
    "detector": [r"^/head/(cls|reg|obj)_preds", r"^/head/[A-Z]", r"^/head/reg_convs\.0/reg_convs\.0\.1/act/",
                 r"^/head/reg_convs\.[12]/reg_convs\.[12]\.1/"],
    "classifier": [r"^/[A-Z]", r"/classifier/"],
    "embedder": [r"^/[A-Z]", r"^/(neck|bn)/"],  # projection (trained embedder), norm and L2 stay fp32
    "crops": [r"^/[A-Z]", r"/classifier/", r"^/heads/"],  # classifier + embedder on one backbone pass
}
# The fallback when a crop model misses its INT8 gate: EfficientNet-Lite's stem and first block
# (112 x 112, ~5 % of its MACs, +0.2 ms per crop) in fp32. A fine-tuned re-ID embedder kept 0.971
# mean cosine to fp32 fully quantized, 0.979 with the stem in fp32, 0.982 with blocks.0, 0.989
# with both, while any later block in fp32 gave 0.972-0.974.
EFFICIENTNET_FRONT = [r"^/conv_stem/", r"^/bn1/", r"^/blocks/blocks\.0/"]


# x86 CPUs without VNNI (AVX2: AMD before Zen 4, Intel before Ice Lake, many mini PCs) multiply U8S8 in pairs
# summed into 16 bits, which saturate: 255 x 127 x 2 > 32767. With full-range weights the INT8 detector
# exported on an AMD EPYC kept 0.89 of fp32's boxes (0.95+ on a VNNI Xeon) and the embedder 0.972 cosine:
# the gates, and the camera, depended on the CPU. Two ways to exact integers on every CPU:
# - the detector's weights use 7 bits (|w| <= 64: 255 x 64 x 2 = 32640 cannot saturate), at full U8S8
#   speed; its gates lose nothing (recall of fp32 1.0, box IoU 0.97 on that EPYC);
# - the crop graphs keep 8-bit weights, since 7 bits cost their embedding 0.98 against 0.995 cosine to
#   fp32, and the edge multiplies them exactly (ONNX Runtime's U8U8 path, `session.x64quantprecision`,
#   which the edge asks for except on x86 with AVX-512 VNNI, at ~20 % more time a crop; AVX-512 VNNI is exact
#   already and the path took it 1.8x the time) when the manifest says full range.
SEVEN_BIT = "int8 per-channel, 7-bit range (no U8S8 saturation on x86 without VNNI)"
FULL_RANGE = "int8 per-channel"
REDUCED_RANGE = {"detector"}


class _BatchReader(CalibrationDataReader):
    def __init__(self, batches: Iterator[np.ndarray]):
        self.batches = iter(batches)

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {"images": batch}


def fp32_nodes(model_path: Path, task: str, extra: list[str] | None = None) -> list[str]:
    """Names of the nodes of ``model_path`` that stay unquantized for ``task`` (plus ``extra`` patterns)."""
    patterns = [re.compile(p) for p in FP32_NODES[task] + (extra or [])]
    return [n.name for n in onnx.load(str(model_path)).graph.node if any(p.search(n.name) for p in patterns)]


def quantize_int8(fp32: Path, int8: Path, task: str, batches: Iterator[np.ndarray],
                  method: str = "minmax", extra_fp32: list[str] | None = None, pixels: bool = False) -> dict[str, object]:
    """Write the INT8 QDQ model calibrated on ``batches``; returns what was done, for the manifest.

    ``extra_fp32``: more node-name patterns to keep in fp32 (e.g. ``EFFICIENTNET_FRONT``).
    ``pixels``: the graph takes raw 0-255 pixels (no scale, mean or std): give it a uint8 input where
    its calibration allows (``take_pixels``).
    """
    prepared = int8.with_suffix(".prep.onnx")
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    excluded = fp32_nodes(prepared, task, extra_fp32)
    reduced = task in REDUCED_RANGE
    with contextlib.redirect_stdout(io.StringIO()):  # onnxruntime prints its histogram settings per tensor
        _quantize_static(prepared, int8, batches, method, excluded, reduced)
    prepared.unlink()
    pixels = pixels and take_pixels(int8)
    return {"format": "QDQ", "activations": "uint8", "weights": SEVEN_BIT if reduced else FULL_RANGE,
            "weight_bits": 7 if reduced else 8,
            "calibration": method, "fp32_nodes": len(excluded), "fp32_extra": list(extra_fp32 or []),
            "input": "uint8" if pixels else "float32"}


# ops that only move values: a uint8 tensor goes through them unchanged (ONNX types them for all tensors)
_LAYOUT_OPS = {"SpaceToDepth", "DepthToSpace", "Gather", "Transpose", "Reshape", "Slice", "Identity"}


def take_pixels(model_path: Path) -> bool:
    """Give a quantized graph a uint8 input where its input reaches quantization unchanged: through ops
    that only move values, then a QuantizeLinear to uint8 of scale 1 and zero point 0 (pixels 0-255 map to
    themselves, so dropping it changes no output). Rewrites ``model_path`` and returns True when it did."""
    model = onnx.load(str(model_path))
    graph = model.graph
    if len(graph.input) != 1 or graph.input[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        return False
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return False  # a subgraph's readers of the input would not be seen below
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    constants = {t.name: t for t in graph.initializer}
    tensor, moved = graph.input[0].name, []
    while len(readers.get(tensor, [])) == 1 and readers[tensor][0].op_type in _LAYOUT_OPS:
        node = readers[tensor][0]
        if node.input[0] != tensor or any(i not in constants for i in node.input[1:]):
            return False  # a second input that is not a constant: not a pure move of the pixels
        moved.append(node.output[0])
        tensor = node.output[0]
    nodes = readers.get(tensor, [])
    if len(nodes) != 1 or nodes[0].op_type != "QuantizeLinear" or len(nodes[0].input) != 3:
        return False
    quantize = nodes[0]
    if {graph.input[0].name, *moved, quantize.output[0]} & {o.name for o in graph.output}:
        return False  # an output of the graph would change type
    scale, zero = (numpy_helper.to_array(constants[name]) if name in constants else None for name in quantize.input[1:])
    if scale is None or zero is None or zero.dtype != np.uint8 or scale.size != 1 or zero.size != 1 \
            or float(scale.reshape(-1)[0]) != 1.0 or int(zero.reshape(-1)[0]) != 0:
        return False
    for node in graph.node:
        node.input[:] = [tensor if name == quantize.output[0] else name for name in node.input]
    graph.node.remove(quantize)
    graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    kept = [info for info in graph.value_info if info.name not in moved]  # their float types no longer hold
    del graph.value_info[:]
    graph.value_info.extend(kept)
    onnx.checker.check_model(model, full_check=True)  # types inferred through the whole graph again
    onnx.save(model, str(model_path))
    return True


def _quantize_static(prepared: Path, int8: Path, batches: Iterator[np.ndarray], method: str,
                     excluded: list[str], reduce_range: bool) -> None:
    quantize_static(
        str(prepared), str(int8), _BatchReader(batches),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        reduce_range=reduce_range,  # weights in [-64, 64]: see SEVEN_BIT
        nodes_to_exclude=excluded,
        calibrate_method={"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                          "entropy": CalibrationMethod.Entropy}[method],
        extra_options={"CalibPercentile": 99.999} if method == "percentile" else {},
    )
