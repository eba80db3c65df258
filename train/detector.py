"""Fine-tune the YOLOX-tiny camera-trap detector on boxed records, CPU-friendly.

The pretrained detector has one class (``animal``); ``expand_classes`` grows its class outputs
to the configured classes (default animal, person, vehicle) without changing the animal score.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Sequence

import cv2
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from tqdm import tqdm

from edge.capture.decode import DEFAULT_MAX_SIDE, ImageDecodeError, decode_image
from edge.detections import Detections
from edge.runtime.manifest import InputSpec
from edge.runtime.preprocess import Letterbox, letterbox, to_tensor
from edge.runtime.yolox import box_iou, make_grid, postprocess
from export.build import ExportOptions, detector_input
from export.gates import matched_recall
from train.datasets.megadetector import read_megadetector
from train.datasets.voc import read_voc
from train.models.yolox import STRIDES, YOLOX, load_yolox
from train.models.yolox_loss import AnchorGrid, Targets, yolox_loss
from train.records import Record
from train.splits import split_records

MAX_SIDE = DEFAULT_MAX_SIDE  # decode size of training and evaluation frames, as on the edge
MANIFEST_THRESHOLD = ExportOptions.detector_threshold  # the bundle's detection threshold (0.25)
NMS_IOU = ExportOptions.nms_iou
PRIOR_PROB = 0.01  # YOLOX's initial class probability of a new output
PERSON_LABELS = frozenset({"person", "people", "human", "humans"})
VEHICLE_LABELS = frozenset({"vehicle", "vehicles", "car", "truck"})
EMPTY_LABELS = frozenset({"empty", "blank"})
MIN_BOX_SIDE = 2.0  # input pixels; smaller boxes left after a crop are dropped


class DetectorConfig(BaseModel):
    """How to fine-tune the detector."""

    model_config = ConfigDict(extra="forbid")

    classes: list[str] = Field(["animal", "person", "vehicle"], min_length=1, title="Detector classes, in output order")
    input_size: tuple[int, int] = Field((480, 640), title="Input (height, width); multiples of 32")
    epochs: int = Field(10, ge=1, title="Most epochs to train")
    batch_size: int = Field(4, ge=1, title="Images per step")
    lr: float = Field(2e-4, gt=0, title="Peak AdamW learning rate (cosine decay to 0)")
    weight_decay: float = Field(5e-4, ge=0, title="AdamW weight decay")
    freeze: Literal["backbone", "none"] = Field("backbone", title="'backbone': train neck and head only")
    update_bn: bool = Field(False, title="Update BatchNorm statistics of trained layers (small batches skew them)")
    hflip: bool = Field(True, title="Flip training images horizontally half the time")
    scale_jitter: float = Field(0.25, ge=0, lt=1, title="Rescale training images by 1 ± this, then crop or pad")
    patience: int = Field(3, ge=1, title="Epochs without a lower val loss before stopping")
    seed: int = Field(0, title="Seed for new class weights, shuffling and augmentation")
    progress: bool = Field(True, title="Show tqdm progress bars")

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
    def quick(cls, **overrides) -> "DetectorConfig":
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


# ---------------------------------------------------------------- classes


def detector_class(label: str, classes: Sequence[str]) -> int | None:
    """The detector class index of a dataset label, or None for an empty image.

    ``person``/``human``/``people`` → person, ``vehicle``/``car``/``truck`` → vehicle,
    ``empty``/``blank`` → None, any other label (a species) → animal.

    Raises:
        ValueError: the class the label maps to is not among ``classes``.
    """
    name = label.casefold()
    if name in EMPTY_LABELS:
        return None
    target = "person" if name in PERSON_LABELS else "vehicle" if name in VEHICLE_LABELS else "animal"
    if target not in classes:
        raise ValueError(f"label {label!r} needs detector class {target!r}, which is not in {list(classes)}")
    return list(classes).index(target)


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


# ---------------------------------------------------------------- records to images


@dataclass(frozen=True)
class BoxImage:
    """All boxes of one image: ``xyxy`` (N, 4) normalised to the upright image, ``class_id`` (N,)."""

    path: Path
    xyxy: np.ndarray
    class_id: np.ndarray

    def __post_init__(self) -> None:
        if self.xyxy.shape != (len(self.class_id), 4):
            raise ValueError(f"{self.path}: xyxy {self.xyxy.shape} does not match {len(self.class_id)} class ids")


def box_images(records: Sequence[Record], classes: Sequence[str]) -> list[BoxImage]:
    """Group records (one per box) by image, in order of first appearance.

    Raises:
        ValueError: a record has a non-empty label but no box (its animal's place is unknown,
            so the image can be neither positive nor negative), or a label needs an unknown class.
    """
    boxes: dict[Path, list[tuple[np.ndarray, int]]] = {}
    for record in records:
        found = boxes.setdefault(record.path, [])
        class_id = detector_class(record.label or "|".join(record.labels), classes)
        if record.bbox is None and class_id is not None:
            raise ValueError(f"{record.path}: label {record.labels} without a box cannot train a detector")
        if record.bbox is not None and class_id is not None:
            x, y, w, h = record.bbox
            found.append((np.array([x, y, x + w, y + h], np.float32), class_id))
    return [BoxImage(path, np.array([b for b, _ in found], np.float32).reshape(-1, 4),
                     np.array([c for _, c in found], np.int64)) for path, found in boxes.items()]


def detector_records(data_root: Path | str, sources: Sequence[str] = ("ena24", "voc")) -> list[Record]:
    """The default box data under ``../shared/data``.

    Args:
        data_root: the shared data folder.
        sources: ``ena24`` (21 frames, MegaDetector-format boxes at conf ≥ 0.2) and ``voc``
            (7 Wild Me photos, hand-drawn boxes). Beware: the ENA24 boxes are test placeholders
            around the frame centre (most miss the animal: IoU < 0.1 with the pretrained
            detector's box on 18 of 21 frames; on 8831.jpg, checked by eye, twice the bear),
            and Wild Me's boxes often cover the flank used for re-identification rather than
            the whole animal, so neither is whole-animal ground truth.
    """
    root = Path(data_root)
    readers = {"ena24": lambda: read_megadetector(root / "frames/ena24_small/md_annotations.json", threshold=0.2),
               "voc": lambda: read_voc(root / "boxes/wbia_voc")}
    unknown = sorted(set(sources) - set(readers))
    if unknown:
        raise ValueError(f"unknown box sources {unknown}; expected some of {sorted(readers)}")
    return [record for name in sources for record in readers[name]()]


def split_detector_records(records: Sequence[Record], seed: int = 0, val_fraction: float = 0.3,
                           ) -> dict[str, list[Record]]:
    """Split by image (all boxes of an image on one side), each dataset (``Record.source``) on its own,
    so that every dataset with at least two images has some in ``val``.

    Returns:
        ``{"train": [...], "val": [...]}``, records in input order.

    Raises:
        ValueError: fewer than a quarter of the images ended in ``val`` (too few images).
    """
    fractions = {"train": 1 - val_fraction, "val": val_fraction}
    val: set[int] = set()
    for source in dict.fromkeys(r.source for r in records):
        members = [r for r in records if r.source == source]
        val.update(id(r) for r in split_records(members, by="image", fractions=fractions, seed=seed,
                                                 stratify=False)["val"])
    splits = {"train": [r for r in records if id(r) not in val], "val": [r for r in records if id(r) in val]}
    n_val, n_all = (len({r.path for r in rs}) for rs in (splits["val"], records))
    if n_val * 4 < n_all:
        raise ValueError(f"only {n_val} of {n_all} images in val: need at least a quarter")
    return splits


# ---------------------------------------------------------------- pixels


@dataclass(frozen=True)
class InputImage:
    """One image letterboxed into the detector input, with its boxes in input pixels."""

    pixels: np.ndarray
    xyxy: np.ndarray
    class_id: np.ndarray
    letterbox: Letterbox
    source_hw: tuple[int, int]


def prepare(image: BoxImage, spec: InputSpec) -> InputImage:
    """Decode (EXIF-upright, ``MAX_SIDE``) and letterbox as the edge does; boxes follow.

    Raises:
        ImageDecodeError: the file is not a usable image.
    """
    rgb = decode_image(image.path, max_side=MAX_SIDE).rgb
    pixels, box = letterbox(rgb, tuple(spec.size), spec.pad_value, spec.pad_anchor, spec.interpolation)
    h, w = rgb.shape[:2]
    xyxy = image.xyxy * np.array([w, h, w, h], np.float32) * box.ratio + [box.pad_x, box.pad_y, box.pad_x, box.pad_y]
    return InputImage(pixels, xyxy.astype(np.float32), image.class_id, box, (h, w))


def prepare_all(images: Sequence[BoxImage], spec: InputSpec, progress: bool = False,
                ) -> tuple[list[InputImage], list[tuple[str, str]]]:
    """Letterboxed images (kept in memory: the datasets are small) and (path, reason) of unreadable ones."""
    out, failures = [], []
    for image in tqdm(images, desc="decode", unit="image", disable=not progress or None, leave=False):
        try:
            out.append(prepare(image, spec))
        except (ImageDecodeError, OSError, ValueError) as exc:
            failures.append((str(image.path), str(exc) or type(exc).__name__))
    return out, failures


def hflip(pixels: np.ndarray, xyxy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mirror the image and its boxes left to right."""
    w = pixels.shape[1]
    return np.ascontiguousarray(pixels[:, ::-1]), np.stack([w - xyxy[:, 2], xyxy[:, 1], w - xyxy[:, 0], xyxy[:, 3]], 1)


def _offset(size: int, scaled: int, lo: float, hi: float, rng: np.random.Generator) -> int:
    """Where the output window starts in the scaled image along one axis (negative: padding first),
    chosen so that the span ``[lo, hi]`` of all boxes stays inside when it can."""
    first, last = min(0, scaled - size), max(0, scaled - size)
    keep_lo, keep_hi = max(first, math.ceil(hi - size)), min(last, math.floor(lo))
    if keep_lo <= keep_hi:
        first, last = keep_lo, keep_hi
    return int(rng.integers(first, last + 1))


def scale_jitter(pixels: np.ndarray, xyxy: np.ndarray, class_id: np.ndarray, jitter: float, pad_value: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rescale by a random factor in ``1 ± jitter``, then crop or pad back to the same size at a
    random place that keeps every box whole when possible; boxes are clipped and those left
    thinner than ``MIN_BOX_SIDE`` dropped."""
    h, w = pixels.shape[:2]
    s = float(rng.uniform(1 - jitter, 1 + jitter))
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    scaled = cv2.resize(pixels, (sw, sh), interpolation=cv2.INTER_LINEAR)
    boxes = xyxy * np.array([sw / w, sh / h, sw / w, sh / h], np.float32)
    span = (boxes[:, :2].min(0), boxes[:, 2:].max(0)) if len(boxes) else (np.zeros(2), np.zeros(2))
    ox = _offset(w, sw, span[0][0], span[1][0], rng)
    oy = _offset(h, sh, span[0][1], span[1][1], rng)
    canvas = np.full_like(pixels, pad_value)
    sx, sy, dx, dy = max(ox, 0), max(oy, 0), max(-ox, 0), max(-oy, 0)
    cw, ch = min(sw - sx, w - dx), min(sh - sy, h - dy)
    canvas[dy : dy + ch, dx : dx + cw] = scaled[sy : sy + ch, sx : sx + cw]
    boxes = np.clip(boxes - np.array([ox, oy, ox, oy], np.float32), 0, [w, h, w, h]).astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE)
    return canvas, boxes[keep], class_id[keep]


def augment(image: InputImage, config: DetectorConfig, rng: np.random.Generator,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A training view of one image: scale jitter, then a horizontal flip half the time."""
    pixels, xyxy, class_id = image.pixels, image.xyxy, image.class_id
    if config.scale_jitter > 0:
        pixels, xyxy, class_id = scale_jitter(pixels, xyxy, class_id, config.scale_jitter, config.spec.pad_value, rng)
    if config.hflip and rng.random() < 0.5:
        pixels, xyxy = hflip(pixels, xyxy)
    return pixels, xyxy, class_id


def batches(images: Sequence[InputImage], config: DetectorConfig, rng: np.random.Generator | None = None,
            ) -> Iterator[tuple[torch.Tensor, list[Targets]]]:
    """Input tensors and targets, ``batch_size`` images at a time; shuffled and augmented when
    ``rng`` is given, else in order and as prepared."""
    order = rng.permutation(len(images)) if rng is not None else np.arange(len(images))
    for start in range(0, len(order), config.batch_size):
        chosen = [images[i] for i in order[start : start + config.batch_size]]
        views = [augment(im, config, rng) if rng is not None else (im.pixels, im.xyxy, im.class_id) for im in chosen]
        x = torch.from_numpy(to_tensor([v[0] for v in views], config.spec))
        yield x, [Targets.from_numpy(v[1], v[2]) for v in views]


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
    bar = tqdm(batches(images, config, rng), desc=desc, unit="step", total=-(-len(images) // config.batch_size),
               disable=not config.progress or None, leave=False)
    for x, targets in bar:
        loss = yolox_loss(model(x), targets, grid).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}")
    return float(np.mean(losses))


def _fit(model: YOLOX, train: Sequence[InputImage], val: Sequence[InputImage], config: DetectorConfig,
         history: DetectorHistory) -> None:
    """Epochs with early stopping on val loss; leaves the best epoch's weights in ``model``."""
    params = set_trainable(model, config.freeze)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * -(-len(train) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    rng = np.random.default_rng(config.seed)
    best_loss, best_state, waited = math.inf, None, 0
    for epoch in range(1, config.epochs + 1):
        tick, lr = time.perf_counter(), optimizer.param_groups[0]["lr"]
        loss = _run_epoch(model, train, config, optimizer, scheduler, rng, f"epoch {epoch}/{config.epochs}")
        val_loss = loss_of(model, val, config)
        history.epochs.append(EpochStats(epoch, loss, val_loss, lr, time.perf_counter() - tick))
        if config.progress:
            tqdm.write(f"epoch {epoch}: loss {loss:.3f} val loss {val_loss:.3f}")
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


# ---------------------------------------------------------------- evaluation


def detect(model: YOLOX, images: Sequence[np.ndarray], input_size: tuple[int, int], threshold: float,
           batch_size: int = 4) -> list[Detections]:
    """Run the model as the edge does: letterbox, raw output, ``postprocess``, boxes back to source pixels."""
    spec = detector_input(input_size)
    grid, strides = make_grid(tuple(input_size), list(STRIDES))
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        boxed = [letterbox(im, tuple(spec.size), spec.pad_value, spec.pad_anchor, spec.interpolation)
                 for im in images[start : start + batch_size]]
        with torch.no_grad():
            raw = model(torch.from_numpy(to_tensor([c for c, _ in boxed], spec))).numpy()
        for r, (_, box) in zip(raw, boxed):
            xyxy, scores, class_ids = postprocess(r, grid, strides, threshold, NMS_IOU)
            out.append(Detections(box.to_source(xyxy), scores, class_ids))
    return out


def average_precision(truths: Sequence[Detections], predictions: Sequence[Detections], class_id: int,
                      iou: float = 0.5) -> float | None:
    """VOC all-point interpolated AP of one class (None when it has no ground truth box).

    Detections of all images are ranked by confidence; each is a true positive when its best
    IoU with a still unmatched same-class truth box of its image is ≥ ``iou``.
    """
    gts = [t.xyxy[t.class_id == class_id] for t in truths]
    n_gt = sum(len(g) for g in gts)
    if n_gt == 0:
        return None
    ranked = sorted(((float(s), i, b) for i, p in enumerate(predictions)
                     for s, b, c in zip(p.confidence, p.xyxy, p.class_id) if c == class_id), key=lambda t: -t[0])
    taken = [np.zeros(len(g), bool) for g in gts]
    hits = np.array([_claim(box, gts[i], taken[i], iou) for _, i, box in ranked], bool)
    recall = np.cumsum(hits) / n_gt
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return _interpolated_area(recall, precision)


def _claim(box: np.ndarray, gts: np.ndarray, taken: np.ndarray, iou: float) -> bool:
    """Whether ``box`` matches its best-IoU truth box, still unclaimed (which it then claims)."""
    if len(gts) == 0:
        return False
    ious = box_iou(box, gts)
    best = int(ious.argmax())
    if ious[best] < iou or taken[best]:
        return False
    taken[best] = True
    return True


def _interpolated_area(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope (max precision at any higher recall), VOC 2010+ style."""
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _truth(image: BoxImage, hw: tuple[int, int]) -> Detections:
    h, w = hw
    return Detections(image.xyxy * np.array([w, h, w, h], np.float32), np.ones(len(image.xyxy)), image.class_id)


def evaluate_detector(model: YOLOX, records: Sequence[Record], classes: Sequence[str],
                      input_size: tuple[int, int] = (480, 640), threshold: float = 0.001) -> dict:
    """Score a detector on boxed records the way the edge runs it.

    Returns:
        ``images``, ``boxes``, ``boxes_per_class``, ``ap50`` (class → AP at IoU 0.5, classes
        with ground truth only), ``map50`` (their mean; 0.0 without any box), ``recall`` (share of
        truth boxes matched one-to-one at IoU 0.5 by a same-class detection scoring ≥
        ``recall_threshold``, the manifest's 0.25) and ``failures`` (path, reason).
    """
    images = box_images(records, classes)
    pixels, kept, failures = [], [], []
    for image in images:
        try:
            pixels.append(decode_image(image.path, max_side=MAX_SIDE).rgb)
            kept.append(image)
        except (ImageDecodeError, OSError) as exc:
            failures.append((str(image.path), str(exc) or type(exc).__name__))
    truths = [_truth(im, px.shape[:2]) for im, px in zip(kept, pixels)]
    predictions = detect(model, pixels, input_size, threshold)
    ap = {name: average_precision(truths, predictions, k) for k, name in enumerate(classes)}
    ap = {name: value for name, value in ap.items() if value is not None}
    recall, boxes = matched_recall(truths, [p[p.confidence >= MANIFEST_THRESHOLD] for p in predictions])
    counts = Counter(classes[c] for t in truths for c in t.class_id)
    return {"images": len(kept), "boxes": boxes, "boxes_per_class": dict(counts), "ap50": ap,
            "map50": float(np.mean(list(ap.values()))) if ap else 0.0, "recall": float(recall),
            "recall_threshold": MANIFEST_THRESHOLD, "failures": failures}


# ---------------------------------------------------------------- command line


def _report(model: YOLOX, splits: dict[str, list[Record]], config: DetectorConfig) -> dict:
    """``evaluate_detector`` on the val images, all together and per dataset."""
    val = splits["val"]
    out = {"all": evaluate_detector(model, val, config.classes, config.input_size)}
    for source in sorted({r.source for r in val}):
        out[source] = evaluate_detector(model, [r for r in val if r.source == source], config.classes,
                                        config.input_size)
    return out


def kept_detections(reference: YOLOX, model: YOLOX, records: Sequence[Record], input_size: tuple[int, int]) -> float:
    """Share of the reference model's boxes (score ≥ 0.25) that ``model`` also finds (same class,
    IoU ≥ 0.5, score ≥ 0.25): what fine-tuning kept of the pretrained detector, whatever the labels."""
    paths = list(dict.fromkeys(r.path for r in records))
    pixels = [decode_image(path, max_side=MAX_SIDE).rgb for path in paths]
    found = [detect(m, pixels, input_size, MANIFEST_THRESHOLD) for m in (reference, model)]
    return float(matched_recall(*found)[0])


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m train.detector``: fine-tune on the default box data, compare with the untuned model."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/yolox_tiny_640_20220528.pth"))
    parser.add_argument("--sources", nargs="+", default=["ena24", "voc"])
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
