"""Which real images calibrate the INT8 models and which check them — never the same ones.

Calibration draws from MLWIC CA-01 frames, the Kenyan VOC photos and re-ID crops; the checks
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
    used = set(split.detector_calibration) | set(split.crop_calibration)
    leaked = used & (set(split.check_frames) | set(split.check_crops))
    if leaked:
        raise AssertionError(f"calibration and check sets overlap: {sorted(leaked)[:3]}")
    return split


def calibration_samples(paths: Iterable[Path], spec: InputSpec) -> Iterator[np.ndarray]:
    """Each calibration image as a (1, 3, H, W) float32 input."""
    for path in paths:
        yield model_input(decode_image(path, max_side=DEFAULT_MAX_SIDE).rgb, spec)
