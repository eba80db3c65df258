"""Re-ID embedder: EfficientNet-Lite0 pooled features → Linear → BN → L2, trained with a margin head.

Training is CPU-sized: the backbone is frozen except its last ``trainable_blocks`` stages, the
frozen part runs once per image and its feature maps are cached, and only the tail, the
projection and the margin head train on those maps. Augmentation (small crops, brightness and
contrast jitter; never a flip, which mirrors a flank pattern into another individual's) is
therefore drawn once per cached view, not per epoch.

Edge maps (SpotID's "binary" images) are fused by averaging two passes of the shared backbone,
one over the photo and one over the edge map: no new weights, and the frozen part stays cacheable.
Such a model takes a 4-channel input (RGB + edge map) and is not the 3-channel crop input the
appliance exports; the default model (``edge_map=False``) is.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import torch
from torch import nn

from common.progress import progress as show_progress
from edge.capture.decode import decode_image
from edge.runtime.preprocess import model_input
from train.models.classifier import CROP_INPUT, create_backbone, freeze_same_padding
from train.records import Record
from train.reid_metrics import retrieval_metrics

EDGE_MAP_FOLDERS = ("crops", "edges")
"""An edge map lives at the crop's path with the ``crops`` folder replaced by ``edges``."""


@dataclass(frozen=True)
class EmbedderConfig:
    """How ``train_embedder`` trains.

    Attributes:
        dim: embedding size.
        trainable_blocks: how many of the backbone's last stages (``blocks[-n:]``, plus its 1×1
            head conv) train; 0 trains only the projection.
        head: ``cosface`` (additive cosine margin) or ``arcface`` (additive angular margin).
        scale: logit scale ``s``.
        margin: margin ``m`` (the largest one when ``adaptive_margin``).
        adaptive_margin: per-class margin ``m * (n_min / n_c) ** margin_power``: rare
            individuals get the full margin, frequent ones less (SpotID's adaptive margin).
        margin_power: exponent of the inverse class frequency.
        epochs: most epochs; training stops earlier after ``patience`` epochs without a better
            validation rank-1.
        patience: epochs without improvement before stopping.
        batch_size: training batch size (also the caching batch size).
        lr: learning rate of projection and head.
        backbone_lr: learning rate of the trainable backbone stages.
        weight_decay: AdamW weight decay.
        augment_views: augmented copies cached per training image, besides the image itself.
        edge_map: fuse the record's edge map (see module docstring).
        seed: seeds python, numpy and torch.
        progress: show progress (a bar on a terminal, else lines).
    """

    dim: int = 256
    trainable_blocks: int = 2
    head: Literal["cosface", "arcface"] = "cosface"
    scale: float = 30.0
    margin: float = 0.35
    adaptive_margin: bool = False
    margin_power: float = 1.0
    epochs: int = 20
    patience: int = 4
    batch_size: int = 32
    lr: float = 1e-3
    backbone_lr: float = 1e-4
    weight_decay: float = 1e-4
    augment_views: int = 0
    edge_map: bool = False
    seed: int = 0
    progress: bool = True


# ---------------------------------------------------------------- margin heads


def adaptive_margins(class_counts: Sequence[int], margin: float, power: float = 1.0) -> np.ndarray:
    """Per-class margins ``margin * (n_min / n_c) ** power``: the rarest class gets ``margin``."""
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or len(counts) == 0 or np.any(counts <= 0):
        raise ValueError(f"class counts must be positive, got {class_counts!r}")
    return (margin * (counts.min() / counts) ** power).astype(np.float32)


class CosFaceHead(nn.Module):
    """Large-margin cosine logits: ``s * (cos θ_j - m_y [j = y])`` over normalised class weights.

    Args:
        dim: embedding size.
        num_classes: number of individuals.
        scale: ``s``.
        margin: ``m``, or the largest margin when ``class_counts`` is given.
        class_counts: training images per class; gives each class its own margin
            (``adaptive_margins``).
        margin_power: exponent of the inverse frequency for the adaptive margins.
    """

    def __init__(self, dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.35,
                 class_counts: Sequence[int] | None = None, margin_power: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.scale = scale
        margins = np.full(num_classes, margin, np.float32) if class_counts is None else \
            adaptive_margins(class_counts, margin, margin_power)
        if len(margins) != num_classes:
            raise ValueError(f"{len(margins)} class counts for {num_classes} classes")
        self.register_buffer("margins", torch.from_numpy(margins))

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine of each (normalised) embedding with each class weight, (B, C)."""
        return nn.functional.normalize(embeddings, dim=1) @ nn.functional.normalize(self.weight, dim=1).T

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Margin-adjusted logits for cross-entropy."""
        cos = self.cosines(embeddings)
        target = nn.functional.one_hot(labels, cos.shape[1]).to(cos.dtype)
        return self.scale * (cos - target * self.margins[labels, None])


class ArcFaceHead(CosFaceHead):
    """Additive angular margin: ``s * cos(θ_y + m_y)`` for the true class, ``s * cos θ_j`` otherwise."""

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = self.cosines(embeddings)
        theta = torch.acos(cos.clamp(-1 + 1e-6, 1 - 1e-6))
        true = torch.cos(torch.clamp(theta + self.margins[labels, None], max=torch.pi))
        target = nn.functional.one_hot(labels, cos.shape[1]).bool()
        return self.scale * torch.where(target, true, cos)


# ---------------------------------------------------------------- the model


class EmbeddingModel(nn.Module):
    """Backbone pooled features → Linear → BatchNorm → L2-normalised embedding.

    Input: normalised crops (``CROP_INPUT``), (B, 3, 224, 224); with ``edge_map`` (B, 4, 224, 224),
    the 4th channel the edge map normalised like the photo. Output: (B, ``dim``) unit rows.
    """

    def __init__(self, backbone: nn.Module, dim: int = 256, edge_map: bool = False):
        super().__init__()
        self.backbone = backbone
        self.dim = dim
        self.edge_map = edge_map
        self.neck = nn.Linear(backbone.num_features, dim, bias=False)
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooled(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone pooled features, averaged over photo and edge-map passes when fused."""
        if not self.edge_map:
            return self._pool(x)
        return (self._pool(x[:, :3]) + self._pool(x[:, 3:4].expand(-1, 3, -1, -1))) / 2

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Pooled features → unit-length embeddings."""
        return nn.functional.normalize(self.bn(self.neck(pooled)), dim=1)

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(x), pre_logits=True)


def frozen_features(backbone: nn.Module, x: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
    """The backbone's feature map before its last ``trainable_blocks`` stages."""
    h = backbone.bn1(backbone.conv_stem(x))
    for block in backbone.blocks[: len(backbone.blocks) - trainable_blocks]:
        h = block(h)
    return h


def tail_pooled(backbone: nn.Module, h: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
    """Finish ``frozen_features``: the last stages, the head conv and global pooling."""
    for block in backbone.blocks[len(backbone.blocks) - trainable_blocks:]:
        h = block(h)
    return backbone.forward_head(backbone.bn2(backbone.conv_head(h)), pre_logits=True)


def tail_parameters(backbone: nn.Module, trainable_blocks: int) -> list[nn.Parameter]:
    """Parameters of the trainable backbone tail (none when ``trainable_blocks`` is 0)."""
    if trainable_blocks == 0:
        return []
    modules = list(backbone.blocks[len(backbone.blocks) - trainable_blocks:]) + [backbone.conv_head, backbone.bn2]
    return [p for m in modules for p in m.parameters()]


# ---------------------------------------------------------------- inputs


def edge_map_path(path: Path) -> Path:
    """The edge map of a crop: its path with the last ``crops`` folder replaced by ``edges``."""
    parts = list(path.parts)
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == EDGE_MAP_FOLDERS[0]:
            parts[index] = EDGE_MAP_FOLDERS[1]
            return Path(*parts)
    raise ValueError(f"{path}: no {EDGE_MAP_FOLDERS[0]!r} folder to find its edge map by")


def load_input(record: Record, edge_map: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
    """One record as a (3 or 4, 224, 224) float32 model input, augmented when ``rng`` is given."""
    images = [decode_image(record.path).rgb]
    if edge_map:
        images.append(decode_image(edge_map_path(record.path)).rgb)
    if rng is not None:
        images = _augment(images, rng)
    channels = [model_input(images[0], CROP_INPUT)[0]]
    if edge_map:
        channels.append(model_input(images[1], CROP_INPUT)[0].mean(axis=0, keepdims=True))
    return np.concatenate(channels)


def _augment(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random 85–100 % crop of each image (as fractions), then brightness/contrast jitter
    of the photo. No flip: a mirrored flank is another pattern."""
    keep = rng.uniform(0.85, 1.0, size=2)
    offset = rng.uniform(0.0, 1.0, size=2) * (1 - keep)
    gain, bias = rng.uniform(0.85, 1.15), rng.uniform(-20, 20)
    out = []
    for index, image in enumerate(images):
        h, w = image.shape[:2]
        top, left = int(offset[0] * h), int(offset[1] * w)
        crop = image[top: top + max(1, int(keep[0] * h)), left: left + max(1, int(keep[1] * w))]
        if index == 0:
            crop = cv2.convertScaleAbs(crop, alpha=gain, beta=bias)
        out.append(np.ascontiguousarray(crop))
    return out


def embed_records(model: nn.Module, records: Sequence[Record], batch_size: int = 32,
                  progress: bool = False) -> np.ndarray:
    """Embed each record's crop (and edge map when ``model.edge_map``), (N, D) float32, no grad."""
    model.eval()
    edge_map = getattr(model, "edge_map", False)
    out = []
    with torch.inference_mode():
        for start in show_progress(range(0, len(records), batch_size), desc="embed", unit="batch", enabled=progress):
            batch = np.stack([load_input(r, edge_map) for r in records[start: start + batch_size]])
            out.append(model(torch.from_numpy(batch)).numpy())
    return np.concatenate(out) if out else np.zeros((0, getattr(model, "dim", 0)), np.float32)


# ---------------------------------------------------------------- feature cache


def _cached_features(model: EmbeddingModel, records: Sequence[Record], config: EmbedderConfig,
                     weights_path: Path, view: int, cache_dir: Path | None, desc: str) -> torch.Tensor:
    """Frozen feature maps of every record, (N, passes, C, h, w); ``view`` 0 is unaugmented."""
    key = hashlib.sha256(repr((Path(weights_path).name, Path(weights_path).stat().st_size,
                               config.trainable_blocks, config.edge_map, view, config.seed,
                               [str(r.path) for r in records])).encode()).hexdigest()[:20]
    file = cache_dir / f"frozen-{key}.pt" if cache_dir is not None else None
    if file is not None and file.exists():
        return torch.load(file, weights_only=True)
    rng = np.random.default_rng((config.seed, view)) if view else None
    chunks = []
    with torch.inference_mode():
        for start in show_progress(range(0, len(records), config.batch_size), desc=desc, unit="batch",
                                   enabled=config.progress):
            x = torch.from_numpy(np.stack([load_input(r, config.edge_map, rng)
                                           for r in records[start: start + config.batch_size]]))
            passes = [x[:, :3]] + ([x[:, 3:4].expand(-1, 3, -1, -1)] if config.edge_map else [])
            chunks.append(torch.stack([frozen_features(model.backbone, p, config.trainable_blocks)
                                       for p in passes], dim=1))
    features = torch.cat(chunks)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save(features, file)
    return features


def _embed_cached(model: EmbeddingModel, features: torch.Tensor, trainable_blocks: int) -> torch.Tensor:
    pooled = [tail_pooled(model.backbone, features[:, i], trainable_blocks) for i in range(features.shape[1])]
    return model.project(torch.stack(pooled).mean(dim=0))


# ---------------------------------------------------------------- training


def train_embedder(train_records: Sequence[Record], val_records: Sequence[Record], weights_path: str | Path,
                   config: EmbedderConfig = EmbedderConfig(),
                   cache_dir: str | Path | None = None) -> tuple[EmbeddingModel, list[dict]]:
    """Train an ``EmbeddingModel`` on individuals, early-stopped on validation rank-1.

    Args:
        train_records: records with ``individual`` set; every individual is one class.
        val_records: records of other individuals (leave-one-out retrieval among themselves).
        weights_path: the ImageNet backbone weights (``create_backbone``).
        config: the training settings.
        cache_dir: where to keep frozen feature maps between runs; None keeps them in memory.

    Returns:
        The model of the best epoch (eval mode, export-ready: fixed "same" padding for 224²
        inputs) and one history row per epoch (epoch 0 is before training).

    Raises:
        ValueError: a record without an individual, or fewer than two training individuals.
    """
    _seed(config.seed)
    classes, labels = _class_labels(train_records)
    model = EmbeddingModel(create_backbone(weights_path), config.dim, config.edge_map)
    model.backbone.requires_grad_(False)
    cache = Path(cache_dir) if cache_dir is not None else None
    views = [_cached_features(model, train_records, config, Path(weights_path), view, cache, f"cache train view {view}")
             for view in range(config.augment_views + 1)]
    train_features, train_labels = torch.cat(views), labels.repeat(len(views))
    val_features = _cached_features(model, val_records, config, Path(weights_path), 0, cache, "cache val")
    head = _make_head(config, len(classes), np.bincount(labels.numpy(), minlength=len(classes)))
    history = _fit(model, head, train_features, train_labels, val_features, [r.individual for r in val_records], config)
    freeze_same_padding(model.backbone, CROP_INPUT.size)
    model.requires_grad_(False)  # after: the padding swap makes new parameters
    return model.eval(), history


def _fit(model: EmbeddingModel, head: CosFaceHead, features: torch.Tensor, labels: torch.Tensor,
         val_features: torch.Tensor, val_ids: list, config: EmbedderConfig) -> list[dict]:
    """Train on cached features until ``patience`` runs out; leaves the best epoch's weights in ``model``."""
    optimizer = _optimizer(model, head, config)
    history = [_evaluate(model, val_features, val_ids, config, epoch=0, loss=float("nan"), started=time.monotonic())]
    best, best_state, stale = history[0]["rank1"], copy.deepcopy(model.state_dict()), 0
    epochs = show_progress(range(1, config.epochs + 1), desc="embedder", unit="epoch", enabled=config.progress)
    with epochs:
        for epoch in epochs:
            started = time.monotonic()
            loss = _train_epoch(model, head, optimizer, features, labels, config, epoch)
            history.append(_evaluate(model, val_features, val_ids, config, epoch, loss, started))
            epochs.write(f"epoch {epoch}: loss {loss:.3f} val rank-1 {history[-1]['rank1']:.3f}")
            if history[-1]["rank1"] > best:
                best, best_state, stale = history[-1]["rank1"], copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
                if stale >= config.patience:
                    break
    model.load_state_dict(best_state)
    return history


def _optimizer(model: EmbeddingModel, head: CosFaceHead, config: EmbedderConfig) -> torch.optim.Optimizer:
    """AdamW over projection and head (``lr``) and the unfrozen backbone tail (``backbone_lr``)."""
    tail = tail_parameters(model.backbone, config.trainable_blocks)
    for p in tail:
        p.requires_grad_(True)
    groups = [{"params": [*model.neck.parameters(), *model.bn.parameters(), *head.parameters()], "lr": config.lr}]
    if tail:
        groups.append({"params": tail, "lr": config.backbone_lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _class_labels(records: Sequence[Record]) -> tuple[list[str], torch.Tensor]:
    missing = [str(r.path) for r in records if r.individual is None]
    if missing:
        raise ValueError(f"{len(missing)} training records without an individual, e.g. {missing[0]}")
    classes = sorted({r.individual for r in records})
    if len(classes) < 2:
        raise ValueError(f"need at least two training individuals, got {classes}")
    index = {name: i for i, name in enumerate(classes)}
    return classes, torch.tensor([index[r.individual] for r in records])


def _make_head(config: EmbedderConfig, num_classes: int, counts: np.ndarray) -> CosFaceHead:
    heads = {"cosface": CosFaceHead, "arcface": ArcFaceHead}
    if config.head not in heads:
        raise ValueError(f"head must be one of {sorted(heads)}, got {config.head!r}")
    return heads[config.head](config.dim, num_classes, config.scale, config.margin,
                              counts if config.adaptive_margin else None, config.margin_power)


def _train_epoch(model: EmbeddingModel, head: CosFaceHead, optimizer: torch.optim.Optimizer,
                 features: torch.Tensor, labels: torch.Tensor, config: EmbedderConfig, epoch: int) -> float:
    """One pass over the cached features; the backbone keeps its BatchNorm statistics (eval mode)."""
    model.eval()
    model.bn.train()
    order = torch.randperm(len(features))
    total, seen = 0.0, 0
    bar = show_progress(range(0, len(order), config.batch_size), desc=f"epoch {epoch}/{config.epochs}", unit="step",
                        enabled=config.progress, leave=False)
    for start in bar:
        batch = order[start: start + config.batch_size]
        if len(batch) < 2:  # BatchNorm1d needs two rows
            continue
        loss = nn.functional.cross_entropy(head(_embed_cached(model, features[batch], config.trainable_blocks),
                                                labels[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(batch), seen + len(batch)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return total / max(seen, 1)


def _evaluate(model: EmbeddingModel, features: torch.Tensor, ids: list, config: EmbedderConfig, epoch: int,
              loss: float, started: float) -> dict:
    model.eval()
    with torch.inference_mode():
        chunks = [_embed_cached(model, features[s: s + config.batch_size], config.trainable_blocks)
                  for s in range(0, len(features), config.batch_size)]
    metrics = retrieval_metrics(torch.cat(chunks).numpy(), ids)
    return {"epoch": epoch, "loss": loss, **metrics, "seconds": time.monotonic() - started}


__all__ = ["ArcFaceHead", "CosFaceHead", "EmbedderConfig", "EmbeddingModel", "adaptive_margins",
           "edge_map_path", "embed_records", "load_input", "train_embedder"]
