"""Do the bigger species backbones pay for themselves? EfficientNet-Lite0, Lite1 and Lite2 side by side.

``python -m train.compare_backbones --run runs/trained --out results/backbones.json`` trains the
species classifier once per backbone on the saved species split of a ``trapedge train`` run (same
records, labels and full-profile ``TrainConfig`` as ``train.cli.species_step``; only the backbone
differs), scores each on the val split (never test: that stays for the shipped model), counts its
parameters and times the torch model on one crop on this CPU. Every backbone is fed the edge's
224² crops (``CROP_INPUT``), not Lite1's and Lite2's native 240² and 260²: the comparison is at
224. Lite1 and Lite2 weights are fetched on demand (``train.pretrained``).

Run it from the project root, as ``trapedge train`` ran: the run's ``config.json`` holds paths
relative to it. Time it on an otherwise idle machine: the latencies are wall-clock medians,
and torch threads fighting another job for the cores inflate them many times (``--threads 1``
gives steadier figures there).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import get_args

import numpy as np
import torch
from torch import nn

from train.classifier import TrainConfig, TrainHistory, evaluate, train_classifier
from train.cli import species_root
from train.config import TrainingConfig, read_species
from train.datasets.inventory import problem_lines
from train.models.classifier import BACKBONE_ARCHS, CROP_INPUT, Backbone
from train.pretrained import fetch
from train.records import Record
from train.splits import FRAME_NUMBER, load_or_make_split

BACKBONES: tuple[str, ...] = get_args(Backbone)
FULL_PROFILE = {"trainable_blocks": 2, "patience": 4}
"""What ``train.cli.species_step``'s full profile sets on top of ``TrainConfig``'s defaults (keep in step)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/trained"),
                        help="a `trapedge train` output folder (its config.json and splits/species.csv)")
    parser.add_argument("--out", type=Path, default=Path("results/backbones.json"), help="the figures, as JSON")
    parser.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES), metavar="KEY",
                        help=f"which to compare (default all: {' '.join(BACKBONES)})")
    parser.add_argument("--weights", type=Path, default=Path("models"), help="pretrained weights folder")
    parser.add_argument("--cache", type=Path, default=Path(".cache/backbones"),
                        help="feature caches, one subfolder per backbone")
    parser.add_argument("--runs", type=int, default=20, help="timed single-crop runs after the warm-up")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def species_splits(run: Path) -> tuple[TrainingConfig, dict[str, list[Record]], list[str]]:
    """The run's config, its saved species split and its labels, read as ``train.cli.species_step`` reads them.

    Raises:
        SystemExit: the run has no species data or no saved species split (none is made here).
        train.splits.StaleSplitError: the saved split no longer matches the data.
    """
    config = TrainingConfig.model_validate_json((run / "config.json").read_text())
    split_path = run / "splits" / "species.csv"
    if not config.species or not split_path.is_file():
        raise SystemExit(f"{run}: no species data or no {split_path}; train the species step there first")
    records, problems = read_species(config)
    for line in problem_lines(problems, all_in=run / "data_problems.txt"):
        print(line)
    if config.crops == "detector":
        from train.crops import detector_boxes

        records = detector_boxes(records, config.crop_bundle, run / "cache" / "boxes.json")
    root = species_root(config)
    splits = load_or_make_split(records, split_path, by=config.split_by, seed=config.seed, root=root,
                                sequence_from_filename=FRAME_NUMBER)
    return config, splits, sorted({r.label for r in records})


def train_config(config: TrainingConfig, backbone: str) -> TrainConfig:
    """The run's full-profile ``TrainConfig`` (with its YAML overrides) on ``backbone``."""
    full = TrainConfig(seed=config.seed, **FULL_PROFILE)
    return TrainConfig.model_validate({**full.model_dump(), **config.classifier, "backbone": backbone})


def crop_latency_ms(model: nn.Module, runs: int = 20, warmup: int = 5) -> float:
    """Median wall time in ms of ``model`` on one ``CROP_INPUT`` crop (batch 1) on this CPU, after ``warmup`` runs."""
    x = torch.zeros(1, 3, *CROP_INPUT.size)  # the time does not depend on the pixels
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            tick = time.perf_counter()
            model(x)
            if i >= warmup:
                times.append(time.perf_counter() - tick)
    return float(np.median(times) * 1000)


def compare_one(backbone: str, config: TrainingConfig, splits: dict[str, list[Record]], labels: list[str],
                args: argparse.Namespace) -> dict:
    """Train on ``backbone``, score on val, count and time: one backbone's figures."""
    weights = fetch(backbone, args.weights)
    model, history = train_classifier(splits["train"], splits["val"], labels, weights, train_config(config, backbone),
                                      args.cache / backbone)
    val = evaluate(model, splits["val"], labels)
    roc = val["empty_vs_animal"]
    return {
        "arch": BACKBONE_ARCHS[backbone],
        "parameters": sum(p.numel() for p in model.parameters()),
        "latency_ms": crop_latency_ms(model.eval(), args.runs),
        "val": {"n": val["n"], "top1": val["top1"], "macro_f1": val["macro_f1"],
                "empty_vs_animal_auc": roc["auc"] if roc else None, "unreadable": len(val["failures"]),
                "f1": {label: scores["f1"] for label, scores in val["per_class"].items()}},
        "training": _training_figures(history),
    }


def _training_figures(history: TrainHistory) -> dict:
    return {"epochs": len(history.epochs), "best_epoch": history.best_epoch, "stopped_early": history.stopped_early,
            "seconds": round(history.seconds, 1), "feature_seconds": round(history.feature_seconds, 1)}


def format_table(backbones: dict[str, dict]) -> str:
    """One line per backbone: size, latency, val scores, training time."""
    lines = [f"{'backbone':<20}{'params':>9}{'ms/crop':>9}{'val top-1':>11}{'macro-F1':>10}{'epochs':>8}{'train s':>9}"]
    for key, r in backbones.items():
        lines.append(f"{key:<20}{r['parameters'] / 1e6:>8.2f}M{r['latency_ms']:>9.1f}{r['val']['top1']:>11.3f}"
                     f"{r['val']['macro_f1']:>10.3f}{r['training']['epochs']:>8}{r['training']['seconds']:>9.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config, splits, labels = species_splits(args.run)
    results = {"run": str(args.run), "split": "val", "input_size": list(CROP_INPUT.size), "labels": labels,
               "threads": torch.get_num_threads(), "torch": torch.__version__, "latency_runs": args.runs,
               "train_config": train_config(config, BACKBONES[0]).model_dump(exclude={"backbone"}), "backbones": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for backbone in args.backbones:
        results["backbones"][backbone] = compare_one(backbone, config, splits, labels, args)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # after each: a long comparison keeps what it did
    print(format_table(results["backbones"]))
    print(f"figures: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
