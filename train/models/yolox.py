"""YOLOX (Ge et al. 2021) as used by the camera-trap detector: CSPDarknet, PAFPN, decoupled head.

A compact re-implementation of Megvii's reference (Apache-2.0) whose parameter names match
its checkpoints, so ``yolox_tiny_640_20220528.pth`` loads with ``strict=True``. The forward
pass stops at the head's raw outputs — (B, A, 4 + 1 + C) box regression in grid units,
objectness and class logits — because decoding and NMS run outside the (quantized) graph,
in ``edge.runtime.yolox``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edge.runtime.manifest import InputSpec

# depth, width multipliers of the published variants
VARIANTS = {"yolox_nano": (0.33, 0.25), "yolox_tiny": (0.33, 0.375), "yolox_s": (0.33, 0.50)}
STRIDES = (8, 16, 32)
# YOLOX-tiny was trained on 640 x 640 letterboxes. A 4:3 frame fills 640 x 480 of that square at
# the same scale, so the default (h, w) drops the padding rows: same boxes, 25% less compute.
NATIVE_SIZE = (640, 640)
DEFAULT_SIZE = (480, 640)
DETECTION_THRESHOLD = 0.25  # the bundle manifest's detection threshold
NMS_IOU = 0.45


def detector_input(size: tuple[int, int] = DEFAULT_SIZE, fit: bool = False) -> InputSpec:
    """The detector's input at ``size`` (h, w): raw 0-255 pixels, letterboxed from the top left with
    bilinear resizing, as YOLOX's own preprocessing trained it (and 5x cheaper than area averaging).
    ``fit``: the canvas shrinks to the frame in steps of the largest stride (a model file that takes
    any size: ``export.onnx_export``'s ``dynamic_size``)."""
    if any(side % STRIDES[-1] for side in size):
        raise ValueError(f"detector input size {size} must be multiples of {STRIDES[-1]} (the head's largest stride)")
    return InputSpec(size=size, scale=1.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize="letterbox",
                     interpolation="linear", pad_value=0.0, pad_anchor="top_left",
                     fit_multiple=STRIDES[-1] if fit else None)


class BaseConv(nn.Module):
    """Conv2d → BatchNorm → SiLU."""

    def __init__(self, cin: int, cout: int, ksize: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, ksize, stride, (ksize - 1) // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.03)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """1×1 then 3×3 conv with an optional residual."""

    def __init__(self, cin: int, cout: int, shortcut: bool = True, expansion: float = 1.0):
        super().__init__()
        hidden = int(cout * expansion)
        self.conv1 = BaseConv(cin, hidden, 1)
        self.conv2 = BaseConv(hidden, cout, 3)
        self.use_add = shortcut and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(self.conv1(x))
        return y + x if self.use_add else y


class CSPLayer(nn.Module):
    """Cross-stage partial block: two branches, bottlenecks on one, concatenated."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        hidden = int(cout * 0.5)
        self.conv1 = BaseConv(cin, hidden, 1)
        self.conv2 = BaseConv(cin, hidden, 1)
        self.conv3 = BaseConv(2 * hidden, cout, 1)
        self.m = nn.Sequential(*[Bottleneck(hidden, hidden, shortcut) for _ in range(n)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(torch.cat([self.m(self.conv1(x)), self.conv2(x)], dim=1))


class SPPBottleneck(nn.Module):
    """Spatial pyramid pooling (5, 9, 13 max-pools)."""

    def __init__(self, cin: int, cout: int, kernels=(5, 9, 13)):
        super().__init__()
        hidden = cin // 2
        self.conv1 = BaseConv(cin, hidden, 1)
        self.m = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernels])
        self.conv2 = BaseConv(hidden * (len(kernels) + 1), cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [pool(x) for pool in self.m], dim=1))


class Focus(nn.Module):
    """Space-to-depth (2×2 pixels → 4 channels) then a conv."""

    def __init__(self, cin: int, cout: int, ksize: int = 3):
        super().__init__()
        self.conv = BaseConv(cin * 4, cout, ksize)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tl, bl = x[..., ::2, ::2], x[..., 1::2, ::2]
        tr, br = x[..., ::2, 1::2], x[..., 1::2, 1::2]
        return self.conv(torch.cat([tl, bl, tr, br], dim=1))


class CSPDarknet(nn.Module):
    """Backbone returning the stride-8, 16 and 32 feature maps."""

    def __init__(self, depth: float, width: float):
        super().__init__()
        c, d = int(width * 64), max(round(depth * 3), 1)
        self.stem = Focus(3, c)
        self.dark2 = nn.Sequential(BaseConv(c, c * 2, 3, 2), CSPLayer(c * 2, c * 2, d))
        self.dark3 = nn.Sequential(BaseConv(c * 2, c * 4, 3, 2), CSPLayer(c * 4, c * 4, d * 3))
        self.dark4 = nn.Sequential(BaseConv(c * 4, c * 8, 3, 2), CSPLayer(c * 8, c * 8, d * 3))
        self.dark5 = nn.Sequential(
            BaseConv(c * 8, c * 16, 3, 2), SPPBottleneck(c * 16, c * 16), CSPLayer(c * 16, c * 16, d, shortcut=False)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.dark2(self.stem(x))
        c3 = self.dark3(x)
        c4 = self.dark4(c3)
        return c3, c4, self.dark5(c4)


class PAFPN(nn.Module):
    """Path-aggregation neck over the backbone's three outputs."""

    def __init__(self, depth: float, width: float):
        super().__init__()
        c3, c4, c5 = (int(ch * width) for ch in (256, 512, 1024))
        n = round(3 * depth)
        self.backbone = CSPDarknet(depth, width)
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.lateral_conv0 = BaseConv(c5, c4, 1)
        self.C3_p4 = CSPLayer(2 * c4, c4, n, False)
        self.reduce_conv1 = BaseConv(c4, c3, 1)
        self.C3_p3 = CSPLayer(2 * c3, c3, n, False)
        self.bu_conv2 = BaseConv(c3, c3, 3, 2)
        self.C3_n3 = CSPLayer(2 * c3, c4, n, False)
        self.bu_conv1 = BaseConv(c4, c4, 3, 2)
        self.C3_n4 = CSPLayer(2 * c4, c5, n, False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x2, x1, x0 = self.backbone(x)
        fpn_out0 = self.lateral_conv0(x0)
        f_out0 = self.C3_p4(torch.cat([self.upsample(fpn_out0), x1], 1))
        fpn_out1 = self.reduce_conv1(f_out0)
        pan_out2 = self.C3_p3(torch.cat([self.upsample(fpn_out1), x2], 1))
        pan_out1 = self.C3_n3(torch.cat([self.bu_conv2(pan_out2), fpn_out1], 1))
        pan_out0 = self.C3_n4(torch.cat([self.bu_conv1(pan_out1), fpn_out0], 1))
        return pan_out2, pan_out1, pan_out0


class YOLOXHead(nn.Module):
    """Decoupled head: per level a stem, then class and regression towers."""

    def __init__(self, num_classes: int, width: float):
        super().__init__()
        hidden = int(256 * width)
        self.num_classes = num_classes
        self.stems = nn.ModuleList(BaseConv(int(ch * width), hidden, 1) for ch in (256, 512, 1024))

        def tower() -> nn.ModuleList:
            return nn.ModuleList(nn.Sequential(BaseConv(hidden, hidden, 3), BaseConv(hidden, hidden, 3)) for _ in STRIDES)

        self.cls_convs, self.reg_convs = tower(), tower()
        self.cls_preds = nn.ModuleList(nn.Conv2d(hidden, num_classes, 1) for _ in STRIDES)
        self.reg_preds = nn.ModuleList(nn.Conv2d(hidden, 4, 1) for _ in STRIDES)
        self.obj_preds = nn.ModuleList(nn.Conv2d(hidden, 1, 1) for _ in STRIDES)

    def forward(self, features: tuple[torch.Tensor, ...]) -> torch.Tensor:
        outputs = []
        for k, x in enumerate(features):
            x = self.stems[k](x)
            cls_feat, reg_feat = self.cls_convs[k](x), self.reg_convs[k](x)
            out = torch.cat([self.reg_preds[k](reg_feat), self.obj_preds[k](reg_feat), self.cls_preds[k](cls_feat)], 1)
            outputs.append(out.flatten(2))
        return torch.cat(outputs, dim=2).permute(0, 2, 1)


class YOLOX(nn.Module):
    """Backbone + neck + head; input RGB float pixels 0-255, output raw (B, A, 5 + C)."""

    def __init__(self, num_classes: int = 1, variant: str = "yolox_tiny"):
        super().__init__()
        depth, width = VARIANTS[variant]
        self.variant = variant
        self.backbone = PAFPN(depth, width)
        self.head = YOLOXHead(num_classes, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def load_yolox(checkpoint: str | Path, num_classes: int = 1, variant: str = "yolox_tiny") -> YOLOX:
    """A YOLOX in eval mode with a Megvii-format checkpoint loaded strictly."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = YOLOX(num_classes, variant)
    model.load_state_dict(state.get("model", state), strict=True)
    return model.eval()
