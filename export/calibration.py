"""Which real images calibrate the INT8 models and which check them — never the same ones.

A trained run (``trapedge export --trained RUN``) uses its own data: calibration from the run's
*train* split (species frames, detector frames, re-ID crops), the checks from its *val* split and
held-out individuals (``run_images``), so a team exports from its own photos without this
project's sample data. Below ``MIN_CALIBRATION`` training images or ``MIN_CHECK`` validation
images the export is refused: the INT8 ranges and gates would rest on too few frames.

The default bundle (``default_images``) draws from MLWIC CA-01 frames, the Kenyan VOC photos and re-ID crops; the checks
use the full-size camera-trap frames (ENA24, Animl, Autofocus), MLWIC's person and vehicle frames
that calibration did not use and Missouri Camera Traps frames (small animals: the INT8 gates
are per detector class and per box size), the lion *val* crops and camtrapR thumbnails. The sets
are disjoint by construction and the split is recorded in the manifest.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.capture.decode import DEFAULT_MAX_SIDE, decode_image, list_images
from edge.runtime.manifest import InputSpec
from edge.runtime.preprocess import model_input
from train.checks import MIN_CALIBRATION, MIN_CHECK


@dataclass(frozen=True)
class ExportImages:
    """Image lists for calibration and checking."""

    detector_calibration: list[Path]
    crop_calibration: list[Path]
    check_frames: list[Path]
    check_crops: list[Path]

    def describe(self, root: Path) -> dict[str, object]:
        """Counts and a digest of each list, for the manifest."""
        def digest(paths: list[Path]) -> str:
            names = (str(p.relative_to(root)) if p.is_relative_to(root) else p.name for p in paths)
            return hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]

        return {name: {"count": len(paths), "list_sha256": digest(paths)} for name, paths in vars(self).items()}


def _every(paths: list[Path], count: int) -> list[Path]:
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def _spread(paths: list[Path], count: int) -> list[Path]:
    """``count`` paths evenly spread over ``paths`` (all of them when there are fewer)."""
    if len(paths) <= count:
        return list(paths)
    return [paths[round(i * (len(paths) - 1) / max(1, count - 1))] for i in range(count)]


def _labelled(csv_path: Path, labels: tuple[str, ...]) -> list[Path]:
    """The images of a ``file,label`` CSV with one of ``labels`` (paths relative to its folder)."""
    with csv_path.open(newline="") as f:
        return [csv_path.parent / row["file"] for row in csv.DictReader(f) if row.get("label") in labels]


def default_images(data: Path, calibration_count: int = 96, check_count: int = 160) -> ExportImages:
    """The default split over ``../shared/data``.

    Raises:
        FileNotFoundError: naming the folder that is missing.
    """
    def images(rel: str) -> list[Path]:
        folder = data / rel
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} not found: export needs the shared data (set DATA=...)")
        return list_images(folder)

    mlwic = images("species/mlwic_ca01")
    voc = images("boxes/wbia_voc/JPEGImages")
    reid_calib = images("reid/leopard_spotid/crops") + images("reid/lion/train")
    frames = images("frames/ena24_small") + images("frames/animl_samples") + images("frames/autofocus_gallery")
    thumbnails = images("formats/camtrapR_thumbnails/inst/pictures/sample_images_species_dir")
    check_crops = _every(images("reid/lion/val"), 48) + thumbnails
    detector_calibration = _every(mlwic, calibration_count - len(voc)) + voc
    crop_calibration = _every(mlwic, calibration_count // 2) + _every(reid_calib, calibration_count // 2)
    calibrated = set(detector_calibration) | set(crop_calibration)
    people = [p for p in _labelled(data / "species/mlwic_ca01/labels.csv", ("Human", "Vehicle")) if p not in calibrated]
    split = ExportImages(
        detector_calibration=detector_calibration,
        crop_calibration=crop_calibration,
        check_frames=frames + people + _every(images("boxes/missouri_camtraps/images"), check_count),
        check_crops=check_crops,
    )
    _check_disjoint(split)
    return split


def _check_disjoint(split: ExportImages) -> None:
    used = set(split.detector_calibration) | set(split.crop_calibration)
    leaked = used & (set(split.check_frames) | set(split.check_crops))
    if leaked:
        raise AssertionError(f"calibration and check sets overlap: {sorted(leaked)[:3]}")




class ExportDataError(ValueError):
    """The run has too few images to calibrate or check the INT8 models; says what to do."""


def run_images(run_dir: Path, calibration_count: int = 96, check_count: int = 240) -> ExportImages:
    """Calibration and check images from a training run's own splits (see the module doc).

    Check frames keep every validation frame with a person or a vehicle (the per-class gates
    need them), then fill up with every n-th other frame.

    Raises:
        ExportDataError: fewer than ``MIN_CALIBRATION`` train or ``MIN_CHECK`` val images.
        FileNotFoundError: the run has no ``config.json`` or no species split.
    """
    from train.config import TrainingConfig, read_reid
    from train.labels import category_of
    from train.splits import load_split

    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: is {run_dir} a `trapedge train` output folder?")
    config = TrainingConfig.model_validate_json(config_path.read_text()).model_copy(update={"out": run_dir})
    by_split: dict[str, list[Path]] = {"train": [], "val": []}
    people: list[Path] = []
    species_csv = run_dir / "splits" / "species.csv"
    if config.species and species_csv.is_file():
        from train.cli import species_root

        root = species_root(config)
        for row in load_split(species_csv).rows:
            if row.split in by_split:
                by_split[row.split].append(_under(root, row.path))
    boxes_csv = run_dir / "splits" / "boxes.csv"
    if config.boxes and boxes_csv.is_file():
        for row in load_split(boxes_csv).rows:
            path = _under(config.data_root, row.path)
            if row.split in by_split:
                by_split[row.split].append(path)
            if row.split == "val" and any(category_of(label) in ("person", "vehicle") for label in row.label.split("|")):
                people.append(path)
    train = list(dict.fromkeys(by_split["train"]))
    val = [p for p in dict.fromkeys(by_split["val"]) if p not in set(train)]
    reid_train = [r.path for rs in read_reid(config, config.reid_train).values() for r in rs]
    reid_eval = [r.path for rs in read_reid(config, config.reid_eval).values() for r in rs]
    what = "add photos (or sources) to the training config and train again"
    if len(train) < MIN_CALIBRATION:
        raise ExportDataError(f"{run_dir}: its train split has {len(train)} images; INT8 calibration needs at least "
                              f"{MIN_CALIBRATION}: {what}")
    if len(val) < MIN_CHECK:
        raise ExportDataError(f"{run_dir}: its val split has {len(val)} images; the INT8 gates need at least "
                              f"{MIN_CHECK}: {what}")
    people = list(dict.fromkeys(p for p in people if p in set(val)))
    others = [p for p in val if p not in set(people)]
    crop_calibration = (_spread(train, calibration_count // 2) + _spread(reid_train, calibration_count // 2)
                        if reid_train else _spread(train, calibration_count))
    split = ExportImages(
        detector_calibration=_spread(train, calibration_count),
        crop_calibration=crop_calibration,
        check_frames=people + _spread(others, max(0, check_count - len(people))),
        check_crops=_spread(reid_eval, 48) + _spread(val, 48),
    )
    _check_disjoint(split)
    return split


def _under(root: Path, key: str) -> Path:
    """A split's saved path (relative to ``root``, or absolute) as a path to open."""
    path = Path(key)
    return path if path.is_absolute() else Path(root) / path


def calibration_samples(paths: Iterable[Path], spec: InputSpec) -> Iterator[np.ndarray]:
    """Each calibration image as a (1, 3, H, W) float32 input."""
    for path in paths:
        yield model_input(decode_image(path, max_side=DEFAULT_MAX_SIDE).rgb, spec)
