"""``trapedge train``: species classifier and re-ID embedder from labelled photos (``make train``).

Steps: read the datasets, split them without leakage (saved, reused on later runs), train the
classifier and the embedder, evaluate on held-out bursts and individuals next to the untrained
ImageNet models, and write checkpoints and the report into ``--out``. ``trapedge export
--trained DIR`` then builds the gated bundle. The detector is the pretrained camera-trap
YOLOX-tiny (fine-tuning it is not implemented yet).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from train.classifier import TrainConfig, evaluate, train_classifier
from train.datasets import SPOTID_FILENAME, format_summary, read_csv, read_folders, save_summary, summarise
from train.embedder import EmbedderConfig, embed_records, train_embedder
from train.models.classifier import PooledEmbedder, create_backbone
from train.pretrained import path_of
from train.reid_metrics import retrieval_metrics
from train.report import write_report
from train.splits import FRAME_NUMBER, load_or_make_split, split_individuals, verify_disjoint_individuals


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="root of the default datasets")
    parser.add_argument("--species-csv", type=Path, help="labels CSV (file,label); default: MLWIC CA-01")
    parser.add_argument("--species-images", type=Path, help="folder the CSV's paths are relative to")
    parser.add_argument("--out", type=Path, default=Path("runs/trained"), help="checkpoints, splits and report")
    parser.add_argument("--weights", type=Path, default=Path("models"), help="pretrained weights (make models)")
    parser.add_argument("--quick", action="store_true", help="small, fast profile (for tests)")
    parser.add_argument("--seed", type=int, default=0)


def species_step(args: argparse.Namespace, weights: Path) -> dict:
    """Read, split by burst, train and evaluate the species classifier; returns its report."""
    csv_path = args.species_csv or args.data / "species/mlwic_ca01/labels.csv"
    images = args.species_images or csv_path.parent
    inventory = read_csv(csv_path, images)
    if inventory.problems:
        print(f"{len(inventory.problems)} problem(s) reading {csv_path}: {inventory.problem_counts()}")
    records = [r for r in inventory if r.label is not None]
    if not records:
        raise SystemExit(f"no labelled images found through {csv_path}")
    splits = load_or_make_split(records, args.out / "splits" / "species.csv", by="event", seed=args.seed,
                                root=images, sequence_from_filename=FRAME_NUMBER)
    summary = summarise(records, {r.path: name for name, rs in splits.items() for r in rs})
    print(format_summary(summary))
    save_summary(summary, args.out / "dataset_summary")
    labels = sorted({r.label for r in records})
    # the full profile: last two blocks, as measured best on MLWIC (0.878 top-1 vs 0.785 with one)
    config = TrainConfig.quick(seed=args.seed) if args.quick else TrainConfig(seed=args.seed, trainable_blocks=2, patience=4)
    model, history = train_classifier(splits["train"], splits["val"], labels, weights, config, args.out / "cache")
    torch.save(model, args.out / "classifier.pt")
    return {**evaluate(model, splits["test"], labels), "labels": labels}


def _reid_scores(model, baseline, records) -> dict:
    ids = [r.individual for r in records]
    return {"baseline": retrieval_metrics(embed_records(baseline, records), ids),
            "trained": retrieval_metrics(embed_records(model, records), ids)}


def reid_step(args: argparse.Namespace, weights: Path) -> dict:
    """Train the embedder on lion train individuals; evaluate on lion val and the leopards."""
    lion_train = list(read_folders(args.data / "reid/lion/train", individuals=True))
    lion_val = list(read_folders(args.data / "reid/lion/val", individuals=True))
    leopards = list(read_folders(args.data / "reid/leopard_spotid/crops", individuals=True,
                                 filename_pattern=SPOTID_FILENAME))
    verify_disjoint_individuals({"train": lion_train, "val": lion_val})
    inner = split_individuals(lion_train, {"train": 0.85, "val": 0.15}, seed=args.seed)  # early stopping
    quick = {"epochs": 3, "patience": 3, "trainable_blocks": 1, "scale": 16.0, "lr": 3e-3} if args.quick else {}
    train_records = inner["train"][::2] if args.quick else inner["train"]
    model, _ = train_embedder(train_records, inner["val"], weights, EmbedderConfig(seed=args.seed, **quick),
                              args.out / "cache")
    torch.save(model, args.out / "embedder.pt")
    baseline = PooledEmbedder(create_backbone(weights)).eval()
    return {"lion val (held-out individuals)": _reid_scores(model, baseline, lion_val),
            "leopards (never trained on)": _reid_scores(model, baseline, leopards)}


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    weights = path_of("efficientnet_lite0", args.weights)
    species = species_step(args, weights)
    reid = reid_step(args, weights)
    figures = {"species": {k: species[k] for k in ("top1", "macro_f1", "n") if k in species},
               "reid": reid, "quick": args.quick, "seconds": round(time.perf_counter() - start, 1)}
    roc = species.get("empty_vs_animal")
    write_report(args.out / "report", classifier=_report_classifier(species), roc=roc, reid=reid,
                 notes=[f"profile: {'quick' if args.quick else 'full'}; wall time {figures['seconds']} s",
                        "detector: the pretrained camera-trap YOLOX-tiny (fine-tuning not implemented yet)"])
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2, default=_plain) + "\n")
    print(json.dumps(figures, indent=2, default=_plain))
    return 0


def _report_classifier(report: dict) -> dict:
    return {**report, "confusion": np.asarray(report["confusion"])}


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else str(value)
