"""Fine-tune the YOLOX-tiny camera-trap detector on boxed records, CPU-friendly.

The pretrained detector has one class (``animal``); ``expand_classes`` grows its class outputs
to the configured classes (e.g. animal, person, vehicle) without changing the animal score; with
the one class ``animal`` (the training default) people and vehicles train as boxes of it.
Data preparation lives in ``train.detector_data``, evaluation in ``train.detector_eval``.
Images are prepared exactly as the edge prepares them (``decode_image``, then ``letterbox``
with the bundle's ``detector_input``), and evaluation decodes the raw output with the edge's
own ``postprocess``, so training, evaluation and serving cannot drift. With the backbone
frozen, only the neck and head train: a few minutes on two CPU cores.
"""


from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from common.progress import progress as show_progress
from edge.runtime.manifest import InputSpec
from train.detector_data import (
    PRIOR_PROB,
    InputImage,
    batches,
    box_images,
    detector_class,
    detector_records,
    prepare,
    prepare_all,
    split_detector_records,
)
from train.detector_eval import average_precision, detect, evaluate_detector, kept_detections
from train.models.yolox import STRIDES, YOLOX, detector_input, load_yolox
from train.models.yolox_loss import AnchorGrid, yolox_loss
from train.records import Record

__all__ = ["DetectorConfig", "DetectorHistory", "average_precision", "box_images", "detect", "detector_class",
           "detector_loss", "detector_records", "evaluate_detector", "expand_classes", "kept_detections", "prepare",
           "prepare_all", "split_detector_records", "train_detector"]


class DetectorConfig(BaseModel):
    """How to fine-tune the detector."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(["animal", "person", "vehicle"], min_length=1, title="Detector classes, in output order")
    input_size: tuple[int, int] = Field((480, 640), title="Input (height, width); multiples of 32")
    epochs: int = Field(10, ge=1, title="Most epochs to train")
    batch_size: int = Field(4, ge=1, title="Images per step")
    lr: float = Field(1e-4, gt=0, title="Peak AdamW learning rate (cosine decay to 0)")
    clip_grad: float | None = Field(35.0, gt=0, title="Largest gradient norm per step (None: no clipping)")
    repeat_threshold: float | None = Field(
        0.5, gt=0, le=1, title="Repeat-factor sampling (LVIS): an image is seen max(1, sqrt(t / f)) times per epoch, f "
                               "the share of training images holding its rarest class (None: each once)")
    weight_decay: float = Field(5e-4, ge=0, title="AdamW weight decay")
    # The whole network by default: on the shared data's val split the backbone trained too gave animal AP50 0.848
    # and recall 0.825 where neck and head alone gave 0.756 / 0.762, for ~1.5x the time an epoch (BatchNorm stays
    # frozen unless update_bn).
    freeze: Literal["backbone", "none"] = Field("none", title="'none': train the whole network; 'backbone': the "
                                                              "neck and head only (about a third less time an epoch)")
    update_bn: bool = Field(False, title="Update BatchNorm statistics of trained layers (small batches skew them)")
    hflip: bool = Field(True, title="Flip training images horizontally half the time")
    scale_jitter: float = Field(0.25, ge=0, lt=1, title="Rescale training images by 1 ± this, then crop or pad")
    patience: int = Field(3, ge=1, title="Epochs without a lower val loss before stopping")
    seed: int = Field(0, title="Seed for new class weights, shuffling and augmentation")
    progress: bool = Field(True, title="Show progress (a bar on a terminal, else lines)")

    @field_validator("classes")
    @classmethod
    def _has_animal(cls, classes: list[str]) -> list[str]:
        if "animal" not in classes or len(set(classes)) != len(classes):
            raise ValueError(f"classes {classes} must be unique and include 'animal' (the pretrained class)")
        return classes

    @field_validator("input_size")
    @classmethod
    def _multiple_of_32(cls, size: tuple[int, int]) -> tuple[int, int]:
        detector_input(size)  # raises for sizes the head cannot tile
        return size

    @classmethod
    def quick(cls, **overrides) -> DetectorConfig:
        """The quick profile for tests: 3 epochs at 288 × 384."""
        return cls(**{"epochs": 3, "input_size": (288, 384), "lr": 3e-4, **overrides})

    @property
    def spec(self) -> InputSpec:
        """The bundle's detector input at this size."""
        return detector_input(self.input_size)


@dataclass
class EpochStats:
    """One epoch's figures."""

    epoch: int
    loss: float
    val_loss: float
    lr: float
    seconds: float


@dataclass
class DetectorHistory:
    """What training did: the val loss before training, per-epoch figures, the epoch kept."""

    initial_val_loss: float = math.nan
    epochs: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    stopped_early: bool = False
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def expand_classes(model: YOLOX, classes: Sequence[str]) -> YOLOX:
    """A copy of the 1-class pretrained detector with one class output per name in ``classes``.

    Every weight is copied; the ``animal`` row of each ``cls_preds`` conv is the pretrained row,
    new rows get small random weights (seeded by torch's global generator) and the bias of a
    1% prior, as YOLOX initialises them.

    Raises:
        ValueError: ``model`` is not single-class or ``classes`` lacks ``animal``.
    """
    if model.head.num_classes != 1 or "animal" not in classes:
        raise ValueError(f"expand_classes needs a 1-class model and 'animal' among {list(classes)}")
    expanded = YOLOX(len(classes), model.variant)
    state = {k: v for k, v in model.state_dict().items() if ".cls_preds." not in k}
    missing, unexpected = expanded.load_state_dict(state, strict=False)
    if unexpected or any(".cls_preds." not in key for key in missing):
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    animal = list(classes).index("animal")
    with torch.no_grad():
        for old, new in zip(model.head.cls_preds, expanded.head.cls_preds):
            nn.init.normal_(new.weight, std=0.01)
            new.bias.fill_(-math.log((1 - PRIOR_PROB) / PRIOR_PROB))
            new.weight[animal], new.bias[animal] = old.weight[0], old.bias[0]
    return expanded.train(model.training)


# ---------------------------------------------------------------- training


def set_trainable(model: YOLOX, freeze: str) -> list[nn.Parameter]:
    """Freeze the CSPDarknet backbone (``freeze="backbone"``) or nothing; returns the trained parameters."""
    for p in model.parameters():
        p.requires_grad_(True)
    if freeze == "backbone":
        for p in model.backbone.backbone.parameters():
            p.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: YOLOX, config: DetectorConfig) -> None:
    """Training mode, with BatchNorm of frozen layers (and, unless ``update_bn``, of all layers) in eval mode."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            frozen = not any(p.requires_grad for p in module.parameters())
            if frozen or not config.update_bn:
                module.eval()


def loss_of(model: YOLOX, images: Sequence[InputImage], config: DetectorConfig) -> float:
    """The YOLOX loss of prepared images in eval mode, normalised over all their foreground points."""
    model.eval()
    grid = AnchorGrid.for_size(config.input_size, STRIDES)
    total, foreground = 0.0, 0
    with torch.no_grad():
        for x, targets in batches(images, config):
            parts = yolox_loss(model(x), targets, grid)
            total += float(parts.total) * max(parts.num_foreground, 1)
            foreground += parts.num_foreground
    return total / max(foreground, 1)


def detector_loss(model: YOLOX, records: Sequence[Record], config: DetectorConfig) -> float:
    """The val loss of a model on records, as ``train_detector`` measures it (no augmentation).

    Raises:
        ValueError: no record's image is readable.
    """
    images, _ = prepare_all(box_images(records, config.classes), config.spec)
    if not images:
        raise ValueError("no readable image")
    return loss_of(model, images, config)


def _run_epoch(model: YOLOX, images: Sequence[InputImage], config: DetectorConfig, optimizer, scheduler,
               rng: np.random.Generator, desc: str) -> float:
    """One shuffled, augmented pass; returns the mean step loss."""
    train_mode(model, config)
    grid = AnchorGrid.for_size(config.input_size, STRIDES)
    losses = []
    bar = show_progress(batches(images, config, rng), desc=desc, unit="step", total=-(-len(images) // config.batch_size),
                        enabled=config.progress, leave=False)
    for x, targets in bar:
        loss = yolox_loss(model(x), targets, grid).total
        optimizer.zero_grad()
        loss.backward()
        if config.clip_grad is not None:  # a few images with many or huge boxes otherwise make the loss jump
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.clip_grad)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return float(np.mean(losses))


def repeat_factors(images: Sequence[InputImage], threshold: float) -> np.ndarray:
    """LVIS repeat factors: per image ``max(1, sqrt(threshold / f(c)))`` over its classes c, f(c) the
    share of images holding class c (images without a box: 1)."""
    holding = [set(np.unique(im.class_id).tolist()) for im in images]
    share = {c: sum(c in h for h in holding) / len(images) for c in set().union(*holding)}
    return np.array([max([1.0, *(math.sqrt(threshold / share[c]) for c in h)]) for h in holding])


def repeated(images: Sequence[InputImage], factors: np.ndarray, rng: np.random.Generator) -> list[InputImage]:
    """One epoch's images: each ``floor(r)`` times and once more with probability ``r - floor(r)``."""
    counts = np.floor(factors).astype(int) + (rng.random(len(factors)) < factors - np.floor(factors))
    return [im for im, n in zip(images, counts) for _ in range(n)]


def _fit(model: YOLOX, train: Sequence[InputImage], val: Sequence[InputImage], config: DetectorConfig,
         history: DetectorHistory) -> None:
    """Epochs with early stopping on val loss; leaves the best epoch's weights in ``model``."""
    params = set_trainable(model, config.freeze)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    factors = repeat_factors(train, config.repeat_threshold) if config.repeat_threshold is not None else None
    if factors is not None and (factors == 1).all():
        factors = None  # nothing rare: each image once, as without sampling
    per_epoch = int(np.ceil(factors).sum()) if factors is not None else len(train)  # the most an epoch can hold
    steps = config.epochs * -(-per_epoch // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    rng = np.random.default_rng(config.seed)
    best_loss, best_state, waited = math.inf, None, 0
    epochs = show_progress(range(1, config.epochs + 1), desc="detector", unit="epoch", enabled=config.progress)
    with epochs:
        for epoch in epochs:
            tick, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
            epoch_images = repeated(train, factors, rng) if factors is not None else train
            loss = _run_epoch(model, epoch_images, config, optimizer, scheduler, rng, f"epoch {epoch}/{config.epochs}")
            val_loss = loss_of(model, val, config)
            history.epochs.append(EpochStats(epoch, loss, val_loss, lr, time.perf_counter() - tick))
            epochs.write(f"epoch {epoch}: loss {loss:.3f} val loss {val_loss:.3f}")
            if val_loss < best_loss:
                best_loss, best_state, waited, history.best_epoch = val_loss, copy.deepcopy(model.state_dict()), 0, epoch
            else:
                waited += 1
                if waited >= config.patience:
                    history.stopped_early = epoch < config.epochs
                    break
    if best_state is not None:  # None only when every val loss was NaN
        model.load_state_dict(best_state)


def train_detector(train_records: Sequence[Record], val_records: Sequence[Record], checkpoint_path: Path | str,
                   config: DetectorConfig | None = None) -> tuple[YOLOX, DetectorHistory]:
    """Fine-tune the pretrained YOLOX-tiny on boxed records.

    Args:
        train_records, val_records: one record per box (an empty image: one record labelled
            ``empty`` without a box); labels map to classes through ``detector_class``.
        checkpoint_path: the Megvii-format 1-class checkpoint (``models/yolox_tiny_640_20220528.pth``).
        config: training settings (default ``DetectorConfig()``).

    Returns:
        The model with ``len(config.classes)`` classes and the weights of the epoch with the
        lowest val loss (eval mode), and the history.

    Raises:
        ValueError: a label needs a class not configured, a non-empty record has no box, or no
            training or validation image is readable.
    """
    config = config or DetectorConfig()
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    model = expand_classes(load_yolox(checkpoint_path), config.classes)
    history = DetectorHistory()
    train, failures = prepare_all(box_images(train_records, config.classes), config.spec, config.progress)
    val, val_failures = prepare_all(box_images(val_records, config.classes), config.spec, config.progress)
    history.failures = failures + val_failures
    if not train or not val:
        raise ValueError(f"no readable {'training' if not train else 'validation'} image")
    history.initial_val_loss = loss_of(model, val, config)
    _fit(model, train, val, config, history)
    for p in model.parameters():
        p.requires_grad_(True)
    history.seconds = time.perf_counter() - started
    return model.eval(), history


# ---------------------------------------------------------------- command line


def _report(model: YOLOX, splits: dict[str, list[Record]], config: DetectorConfig) -> dict:
    """``evaluate_detector`` on the val images, all together and per dataset."""
    val = splits["val"]
    out = {"all": evaluate_detector(model, val, config.classes, config.input_size)}
    for source in sorted({r.source for r in val}):
        out[source] = evaluate_detector(model, [r for r in val if r.source == source], config.classes,
                                        config.input_size)
    return out


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m train.detector``: fine-tune on the default box data, compare with the untuned model."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/yolox_tiny_640_20220528.pth"))
    parser.add_argument("--sources", nargs="+", default=["missouri", "voc", "mlwic"])
    parser.add_argument("--quick", action="store_true", help="the quick test profile")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("--save", type=Path, help="write the fine-tuned state_dict here")
    args = parser.parse_args(argv)
    config = DetectorConfig.quick() if args.quick else DetectorConfig()
    splits = split_detector_records(detector_records(args.data, args.sources), config.seed)
    torch.manual_seed(config.seed)
    untuned = expand_classes(load_yolox(args.checkpoint), config.classes).eval()
    model, history = train_detector(splits["train"], splits["val"], args.checkpoint, config)
    figures = {"config": config.model_dump(mode="json"), "seconds": history.seconds,
               "val_loss": {"untuned": history.initial_val_loss, "tuned": min(e.val_loss for e in history.epochs)},
               "epochs": [vars(e) for e in history.epochs], "best_epoch": history.best_epoch,
               "untuned": _report(untuned, splits, config), "tuned": _report(model, splits, config),
               "kept_untuned_detections": kept_detections(untuned, model, splits["val"], config.input_size)}
    if args.save:
        torch.save(model.state_dict(), args.save)
    text = json.dumps(figures, indent=2)
    if args.out:
        args.out.write_text(text)
    print(text)
    return figures


if __name__ == "__main__":
    main()
