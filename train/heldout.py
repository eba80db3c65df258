"""What the camera does on the held-out images of a training run: ``trapedge evaluate``, per source.

``trapedge train`` saves its splits; the test images of each dataset (the species sources, and the
box sources: Missouri sequences, MLWIC's people and vehicles) never trained or tuned anything. After
``trapedge export --trained RUN`` has built the bundle, these images go through that bundle's INT8
pipeline (``build_analyzer``, info bars detected, as the shipped ``edge.example.yaml`` runs it) and
the figures, one entry per source, go into the bundle's manifest (``evaluation``) and its model card.
So the report states what the camera will do, not what a whole-frame classifier did in training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from train.config import TrainingConfig, _read_species, read_boxes
from train.evaluate import Annotated, annotated, evaluate
from train.splits import load_split


def _subset_paths(split_csv: Path, root: Path, subset: str) -> set[Path]:
    return {(root / row.path).resolve() for row in load_split(split_csv).rows if row.split == subset}


def held_out_sets(run_dir: Path, subset: str = "test") -> dict[str, list[Annotated]]:
    """Each source's held-out (``test``) images with their reference, named ``species:<name>`` /
    ``boxes:<name>``; sources without such images are left out. ``subset="val"`` gives the images
    that choose thresholds (never the test ones).

    Raises:
        FileNotFoundError: the run has no ``config.json`` or a dataset is gone.
    """
    from train.cli import _species_split, species_root
    from train.detector_data import split_boxes

    config = TrainingConfig.model_validate_json((run_dir / "config.json").read_text())
    config = config.model_copy(update={"out": run_dir})
    sets: dict[str, list[Annotated]] = {}
    species_csv = run_dir / "splits" / "species.csv"
    if config.species and species_csv.exists():
        root = species_root(config)
        test = _subset_paths(species_csv, root, subset)
        for source in config.species:
            where = config.resolve(source.path)
            images = config.resolve(source.images) if source.images else None
            records = [r for r in _read_species(source, where, images) if r.path.resolve() in test]
            if records:
                name = source.name or (source.path.parent.name if where.is_file() else where.name)
                sets[f"species:{name}"] = annotated(records)
    if config.boxes and (run_dir / "splits" / "boxes.csv").exists():
        records = read_boxes(config)
        test_records = split_boxes(records, run_dir / "splits" / "boxes.csv", config.seed,
                                   fixed=_species_split(config), root=config.data_root)[subset]
        for name in dict.fromkeys(r.source for r in test_records):
            sets[f"boxes:{name}"] = annotated(r for r in test_records if r.source == name)
    return sets


def evaluate_held_out(bundle: Path, run_dir: Path, precision: str = "int8", subset: str = "test",
                      detection: dict[str, Any] | None = None) -> dict[str, Any]:
    """``evaluate`` of each held-out set through ``bundle``'s pipeline: ``{source: figures}`` (the
    per-image failure reasons left out: their count stays). ``subset="val"`` and ``detection``
    (``DetectionConfig`` fields) compare settings on the images meant for choosing them."""
    from edge.app.config import EdgeConfig
    from edge.app.factory import build_analyzer

    config = EdgeConfig.model_validate({
        "device_id": "trapedge-evaluate", "bundle": {"path": str(bundle), "precision": precision},
        "sources": [{"type": "folder", "id": "held-out", "path": str(run_dir)}],
        "gate": {"enabled": False}, "preprocess": {"detect_info_bars": True}, "detection": detection or {}})
    analyzer = build_analyzer(config)
    out = {}
    for name, references in held_out_sets(run_dir, subset).items():
        figures, _ = evaluate(analyzer, references)
        figures.pop("failures", None)
        out[name] = figures
    return out

