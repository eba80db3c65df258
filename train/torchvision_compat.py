"""Make ``import torchvision`` (and so ``import timm``) work with a CPU-only torch.

PyPI's torchvision wheel is a CUDA build. With the CPU torch wheel its compiled library does
not load, and importing torchvision fails with ``operator torchvision::nms does not exist``
because its Python side registers fake kernels for ops that were never defined. Defining the
two op schemas it looks up lets the Python parts (transforms, timm's models) import.
torchvision's C++ ops (nms, roi_align, video/io) stay unavailable — trapedge never uses them;
the edge has its own numpy NMS. Where torchvision imports normally nothing is changed.

Import through this module: ``from train.torchvision_compat import timm``.
"""

from __future__ import annotations

import sys

import torch

_LIBS: list[torch.library.Library] = []


def _import_torchvision():
    try:
        import torchvision

        return torchvision
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor qscores, float iou_threshold) -> Tensor")
    _LIBS.append(lib)  # the library must stay alive for the schemas to stay defined
    import torchvision

    return torchvision


torchvision = _import_torchvision()
import timm  # noqa: E402

__all__ = ["timm", "torchvision"]
