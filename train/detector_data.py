"""Boxed records to training images for the detector: labels to detector classes, the default
box datasets, a leak-free split by image, and the edge's own decode + letterbox with flip and
scale-jitter augmentation.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from common.progress import progress as show_progress
from edge.capture.decode import DEFAULT_MAX_SIDE, ImageDecodeError, decode_image
from edge.runtime.manifest import InputSpec
from edge.runtime.preprocess import Letterbox, letterbox, to_tensor
from train.config import MISSOURI_SEQUENCE, MLWIC_BOXES
from train.datasets.megadetector import read_megadetector
from train.datasets.voc import read_voc
from train.datasets.yolo import read_yolo
from train.labels import category_of
from train.models.yolox import DETECTION_THRESHOLD
from train.models.yolox_loss import Targets
from train.records import Record
from train.splits import FRAME_NUMBER, load_or_make_split, path_key, split_records

if TYPE_CHECKING:  # the config lives with the trainer, which imports this module
    from train.detector import DetectorConfig

MAX_SIDE = DEFAULT_MAX_SIDE  # decode size of training and evaluation frames, as on the edge
MANIFEST_THRESHOLD = DETECTION_THRESHOLD  # the bundle's detection threshold (0.25)
PRIOR_PROB = 0.01  # YOLOX's initial class probability of a new output
MIN_BOX_SIDE = 2.0  # input pixels; smaller boxes left after a crop are dropped


# ---------------------------------------------------------------- classes


def boxes_every_object(classes: Sequence[str]) -> bool:
    """Whether ``classes`` is the single class ``animal``, which learns and finds people and vehicles as
    boxes of it (``detector_class``) for the classifier to name."""
    return list(classes) == ["animal"]


def detector_class(label: str, classes: Sequence[str]) -> int | None:
    """The detector class index of a dataset label, or None for an empty image.

    ``person``/``human``/``people`` → person, ``vehicle``/``car``/``truck`` → vehicle,
    ``empty``/``blank`` → None, any other label (a species) → animal. A single-class detector
    (``classes`` ``["animal"]``, like the pretrained camera-trap detector) learns every boxed object
    as its one class, people and vehicles too: it boxes them, the classifier names them (rule 8 of
    ``edge.analysis.labels``) and privacy blurs them.

    Raises:
        ValueError: the class the label maps to is not among ``classes``.
    """
    target = category_of(label)
    if target is None:
        return None
    if boxes_every_object(classes):
        return 0
    if target not in classes:
        raise ValueError(f"label {label!r} needs detector class {target!r}, which is not in {list(classes)}")
    return list(classes).index(target)



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


def detector_records(data_root: Path | str, sources: Sequence[str] = ("missouri", "voc", "mlwic")) -> list[Record]:
    """The default box data under ``../shared/data``, each record's ``source`` the dataset's name.

    Args:
        data_root: the shared data folder.
        sources: ``missouri`` (Missouri Camera Traps, YOLO boxes; a frame with an empty label file
            is unlabelled, not empty, and left out; sequences from the file names), ``voc`` (7 Wild Me
            photos, hand-drawn boxes, often of the flank rather than the whole animal) and ``mlwic``
            (``MLWIC_BOXES``: checked person and vehicle boxes, and the frames labelled empty). The
            ENA24 boxes (``md_annotations.json``) are placeholders around the frame centre, not
            detections, and are never used for training.
    """
    root = Path(data_root)
    readers = {"missouri": lambda: read_yolo(root / "boxes/missouri_camtraps", empty_files="unlabelled",
                                             event_pattern=MISSOURI_SEQUENCE),
               "voc": lambda: read_voc(root / "boxes/wbia_voc"),
               "mlwic": lambda: read_megadetector(MLWIC_BOXES, root / "species/mlwic_ca01", threshold=0.0)}
    unknown = sorted(set(sources) - set(readers))
    if unknown:
        raise ValueError(f"unknown box sources {unknown}; expected some of {sorted(readers)}")
    return [replace(record, source=name) for name in sources for record in readers[name]()]


BOX_FRACTIONS = {"train": 0.5, "val": 0.25, "test": 0.25}


def split_boxes(records: Sequence[Record], path: Path, seed: int = 0, fixed: dict[Path, str] | None = None,
                root: Path | None = None) -> dict[str, list[Record]]:
    """Train / val / test of the box data, leak-free, saved at ``path`` and reused on later runs.

    An image that already has a split (``fixed``: resolved path → split, e.g. the species split of
    the same frames) keeps it, so a frame held out from the classifier is held out from the detector
    too. The rest are split by sequence (``Record.event``; bursts from capture times or frame
    numbers where missing), stratified by label (``BOX_FRACTIONS``).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``, records in input order.
    """
    fixed = fixed or {}
    pinned = {id(r): fixed[r.path.resolve()] for r in records if r.path.resolve() in fixed}
    rest = [r for r in records if id(r) not in pinned]
    split_of = dict(pinned)
    if rest:
        keyed_root = root if root is not None and all(r.path.is_relative_to(root) for r in rest) else None
        # frames the box split once held that the species split now decides (a box source also read
        # as a species source) must not have moved
        now_pinned = {path_key(r.path, keyed_root): pinned[id(r)] for r in records if id(r) in pinned}
        made = load_or_make_split(rest, path, by="event", fractions=BOX_FRACTIONS, seed=seed, root=keyed_root,
                                  pinned=now_pinned, sequence_from_filename=FRAME_NUMBER)
        split_of.update({id(r): name for name, rs in made.items() for r in rs})
    out: dict[str, list[Record]] = {name: [] for name in BOX_FRACTIONS}
    for record in records:
        out.setdefault(split_of[id(record)], []).append(record)
    return out


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
    for image in show_progress(images, desc="decode", unit="image", enabled=progress, leave=False):
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
