"""``trapedge train``: species classifier, re-ID embedder and detector from labelled photos.

Steps: read the datasets named by the training config (``--config``; default: the shared data),
split them without leakage (saved, reused on later runs), train the classifier, the embedder and
the detector, evaluate each on held-out data next to the untrained model, and write checkpoints,
``figures.json`` and the report into ``out``. ``trapedge export --trained DIR`` then builds the
gated bundle (``make train export`` does both).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from train.classifier import TrainConfig, evaluate, train_classifier
from train.config import SOURCE_INDEX, TrainingConfig, load_training_config, read_boxes, read_reid, read_species
from train.datasets import capture_time_warnings, format_summary, save_summary, summarise
from train.datasets.inventory import problem_lines
from train.embedder import EmbedderConfig, embed_records, train_embedder
from train.models.classifier import PooledEmbedder, create_backbone
from train.pretrained import path_of
from train.records import Record
from train.reid_metrics import retrieval_metrics
from train.report import write_report
from train.splits import (
    FRAME_NUMBER,
    StaleSplitError,
    load_or_make_split,
    load_split,
    split_individuals,
    verify_disjoint_individuals,
)

STEPS = ("species", "reid", "detector")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path,
                        help="training YAML (see deploy/train.example.yaml); default: the shared data")
    parser.add_argument("--data", type=Path, help="data_root: where relative dataset paths start (default ../shared/data)")
    parser.add_argument("--out", type=Path, help="checkpoints, splits and report (default runs/trained)")
    parser.add_argument("--weights", type=Path, default=Path("models"), help="pretrained weights (make models)")
    parser.add_argument("--quick", action="store_true", help="small, fast profile (for tests)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--validate-config", action="store_true", help="check the config, report errors, exit")
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS),
                        help="which models to train (default all); the others keep their last results in --out")


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The config file (or the default one) with the command line's overrides."""
    config = load_training_config(args.config) if args.config else TrainingConfig.default()
    overrides = {k: v for k, v in (("data_root", args.data), ("out", args.out), ("seed", args.seed)) if v is not None}
    return config.model_copy(update=overrides)


def species_step(config: TrainingConfig, weights: Path, quick: bool) -> dict | None:
    """Read, split by burst, train and evaluate the species classifier; returns its report."""
    if not config.species:
        return None
    records, problems = read_species(config)
    for line in capture_time_warnings(records) + problem_lines(problems, all_in=config.out / "data_problems.txt"):
        print(line)
    if not records:
        raise SystemExit("no labelled species images found: check the config's species sources")
    if config.crops == "detector":
        from train.crops import detector_boxes

        records = detector_boxes(records, config.crop_bundle, config.out / "cache" / "boxes.json")
    splits = species_split(config, records)
    summary = summarise(records, {r.path: name for name, rs in splits.items() for r in rs})
    print(format_summary(summary))
    save_summary(summary, config.out / "dataset_summary")
    labels = sorted({r.label for r in records})
    # the full profile: last two blocks, as measured best on MLWIC (0.878 top-1 vs 0.785 with one)
    full = TrainConfig(seed=config.seed, trainable_blocks=2, patience=4)
    defaults = TrainConfig.quick(seed=config.seed) if quick else full
    train_config = defaults.model_copy(update=config.classifier)
    TrainConfig.model_validate(train_config.model_dump())  # overrides from the YAML are checked too
    backbone = path_of(train_config.backbone, weights.parent)  # lite0 unless the config's classifier says otherwise
    cache = config.out / "cache"  # features of another backbone never share lite0's cache
    model, _ = train_classifier(splits["train"], splits["val"], labels, backbone, train_config,
                                cache if train_config.backbone == "efficientnet_lite0" else cache / train_config.backbone)
    torch.save(model, config.out / "classifier.pt")
    return {**evaluate(model, splits["test"], labels), "labels": labels}


def species_split(config: TrainingConfig, records: list[Record]) -> dict[str, list[Record]]:
    """The run's saved species split, grown by any new images; a new run makes it source by source, in
    the config's order, so that adding a source never moves the images of the sources before it (their
    held-out images stay held out, on a new machine as on this one)."""
    path = config.out / "splits" / "species.csv"
    options = {"by": config.split_by, "seed": config.seed, "root": species_root(config),
               "fixed_groups": _box_groups(config), "sequence_from_filename": FRAME_NUMBER}
    if path.exists():
        return load_or_make_split(records, path, **options)
    splits: dict[str, list[Record]] = {}
    for count in range(1, len(config.species) + 1):
        first = [r for r in records if r.extra.get(SOURCE_INDEX, 0) < count]
        if first:
            splits = load_or_make_split(first, path, **options)
    return splits


def _box_groups(config: TrainingConfig) -> dict[str, str]:
    """Sequence → split of a run's saved box split (empty without one): frames of a box source that is
    also read as a species source (Missouri's class folders) take the split their sequence has there,
    so the classifier never trains on a frame the detector's figures hold out."""
    path = config.out / "splits" / "boxes.csv"
    if config.split_by != "event" or not path.exists():
        return {}
    return {row.group: row.split for row in load_split(path).rows}


def _reid_scores(model, baseline, records) -> dict:
    ids = [r.individual for r in records]
    return {"baseline": retrieval_metrics(embed_records(baseline, records), ids),
            "trained": retrieval_metrics(embed_records(model, records), ids)}


def reid_step(config: TrainingConfig, weights: Path, quick: bool) -> dict | None:
    """Train the embedder on the training individuals; evaluate on each held-out set."""
    train_sets = read_reid(config, config.reid_train)
    if not train_sets:
        return None
    held_out = read_reid(config, config.reid_eval)
    train_records = [r for rs in train_sets.values() for r in rs]
    verify_disjoint_individuals({"train": train_records, **held_out})
    inner = split_individuals(train_records, {"train": 0.85, "val": 0.15}, seed=config.seed)  # early stopping
    quick_options = {"epochs": 3, "patience": 3, "trainable_blocks": 1, "scale": 16.0, "lr": 3e-3} if quick else {}
    try:
        embedder_config = EmbedderConfig(seed=config.seed, **{**quick_options, **config.embedder})
    except TypeError as exc:
        raise SystemExit(f"training config, embedder: {exc}") from None
    model, _ = train_embedder(inner["train"][::2] if quick else inner["train"], inner["val"], weights, embedder_config,
                              config.out / "cache")
    torch.save(model, config.out / "embedder.pt")
    baseline = PooledEmbedder(create_backbone(weights)).eval()
    return {name: _reid_scores(model, baseline, records) for name, records in held_out.items()}


# a fine-tuned detector ships only if it does not lose what the pretrained one finds on val images
KEEP_PRETRAINED_BOXES_MIN = 0.9
ANIMAL_AP_TOLERANCE = 0.01  # AP50 points a fine-tuned detector may lose on animals (COCO AP is noisy)
FALSE_ALARM_TOLERANCE = 0.02  # share of val animal frames that may newly get a person or vehicle box


def detector_verdict(base: dict, tuned: dict, kept: float) -> tuple[bool, list[str]]:
    """Whether the fine-tuned detector ships, and the reasons when it does not.

    On the val images: animals no worse (AP50 within ``ANIMAL_AP_TOLERANCE``, recall at the
    manifest threshold at least the pretrained's), each other class with val boxes better (AP50),
    each other class with val frames labelled so (``frames_found``: the species data's Human /
    Vehicle frames, which need no box) found in more of them (a single-class detector, which boxes
    people and vehicles for the classifier to name: boxed in no fewer), no more val animal frames with a
    person or vehicle box than the pretrained detector (within ``FALSE_ALARM_TOLERANCE``), and at least
    ``KEEP_PRETRAINED_BOXES_MIN`` of the pretrained detector's own boxes on frames without people or
    vehicles still found.
    """
    reasons = []
    false_alarms = (tuned.get("frames_found", {}).get("animal_as_person_or_vehicle"),
                    base.get("frames_found", {}).get("animal_as_person_or_vehicle"))
    if false_alarms[0] and false_alarms[0]["frames"]:
        before = false_alarms[1]["found"] if false_alarms[1] else 0
        if false_alarms[0]["found"] > before + FALSE_ALARM_TOLERANCE * false_alarms[0]["frames"]:
            reasons.append(f"{false_alarms[0]['found']} of {false_alarms[0]['frames']} animal frames get a person or "
                           f"vehicle box (pretrained {before})")
    for name, found in tuned.get("frames_found", {}).items():
        if name == "animal_as_person_or_vehicle":
            continue
        before = base.get("frames_found", {}).get(name, {"found": 0})
        # a class of its own must find more of them; a single-class detector's box (any_box) no fewer
        short = found["found"] < before["found"] if found.get("any_box") else found["found"] <= before["found"]
        if found["frames"] and short:
            reasons.append(f"{name} {'boxed' if found.get('any_box') else 'found'} in {found['found']} of "
                           f"{found['frames']} {name} frames, pretrained {before['found']}")
    base_ap, tuned_ap = base["ap50"], tuned["ap50"]
    if tuned_ap.get("animal", 0.0) < base_ap.get("animal", 0.0) - ANIMAL_AP_TOLERANCE:
        reasons.append(f"animal AP50 {tuned_ap.get('animal', 0):.3f} < pretrained {base_ap.get('animal', 0):.3f}")
    base_recall, tuned_recall = (s.get("recall_by_bucket", {}).get("animal", 0.0) for s in (base, tuned))
    if tuned_recall < base_recall:
        reasons.append(f"animal recall {tuned_recall:.3f} < pretrained {base_recall:.3f}")
    for name in sorted(set(tuned_ap) - {"animal"}):
        if tuned_ap[name] <= base_ap.get(name, 0.0):
            reasons.append(f"{name} AP50 {tuned_ap[name]:.3f} not above pretrained {base_ap.get(name, 0.0):.3f}")
    if kept < KEEP_PRETRAINED_BOXES_MIN:
        reasons.append(f"kept {kept:.3f} of the pretrained detector's boxes (< {KEEP_PRETRAINED_BOXES_MIN})")
    return not reasons, reasons


def detector_step(config: TrainingConfig, weights: Path, quick: bool) -> dict | None:
    """Fine-tune the detector on the box data; keep it only if it is no worse on held-out images.

    Judged on the val split by ``detector_verdict``; otherwise the pretrained detector (with the
    configured classes) ships, and the report says why. The fine-tuned weights are saved either way
    (``detector_finetuned.pt``).
    """
    if not config.boxes:
        return None
    from train.detector import DetectorConfig, evaluate_detector, expand_classes, kept_detections, train_detector
    from train.detector_data import split_boxes
    from train.labels import category_of
    from train.models.yolox import load_yolox

    splits = split_boxes(read_boxes(config), config.out / "splits" / "boxes.csv", config.seed,
                         fixed=_species_split(config), root=config.data_root)
    defaults = DetectorConfig.quick(seed=config.seed) if quick else DetectorConfig(seed=config.seed)
    det_config = DetectorConfig.model_validate({**defaults.model_dump(), "classes": list(config.detector_classes),
                                                **config.detector})
    checkpoint = path_of("yolox_tiny_camera_trap", weights)
    if quick:  # a quarter of the images (whole images, every dataset): the test profile
        splits = {name: _every_nth_image(records, 4) for name, records in splits.items()}
    model, history = train_detector(splits["train"], splits["val"], checkpoint, det_config)
    torch.save({"model": model, "classes": det_config.classes, "fine_tuned": True,
                "input_size": list(det_config.input_size)}, config.out / "detector_finetuned.pt")
    pretrained = expand_classes(load_yolox(checkpoint), det_config.classes).eval()
    scores = {name: evaluate_detector(m, splits["val"], det_config.classes, det_config.input_size)
              for name, m in (("pretrained", pretrained), ("fine-tuned", model))}
    labelled = _labelled_frames(config, "val")
    for name, m in (("pretrained", pretrained), ("fine-tuned", model)):
        scores[name]["frames_found"] = frames_found(m, labelled, det_config.classes, det_config.input_size)
    people = {r.path for r in splits["val"] if category_of(r.label or "empty") in ("person", "vehicle")}
    kept = kept_detections(pretrained, model, [r for r in splits["val"] if r.path not in people],
                           det_config.input_size)
    better, reasons = detector_verdict(scores["pretrained"], scores["fine-tuned"], kept)
    torch.save({"model": model if better else pretrained, "classes": det_config.classes, "fine_tuned": better,
                "input_size": list(det_config.input_size)}, config.out / "detector.pt")
    return {**scores, "kept": "fine-tuned" if better else "pretrained", "why_not": reasons,
            "pretrained_boxes_kept": kept, "classes": det_config.classes,
            "train_images": len({r.path for r in splits["train"]}), "val_images": len({r.path for r in splits["val"]}),
            "test_images": len({r.path for r in splits["test"]}), "epochs": len(history.epochs),
            "seconds": round(history.seconds, 1)}


def _labelled_frames(config: TrainingConfig, split: str) -> dict[str, list[Path]]:
    """The species data's frames of one split labelled as a person or a vehicle, by category."""
    from train.labels import category_of

    if not config.species or not (config.out / "splits" / "species.csv").exists():
        return {}
    records, _ = read_species(config)
    in_split = {path for path, name in _species_split(config).items() if name == split}
    out: dict[str, list[Path]] = {}
    for record in records:
        category = category_of(record.label or "empty")
        if category in ("person", "vehicle", "animal") and record.path.resolve() in in_split:
            out.setdefault(category, []).append(record.path)
    return out


def frames_found(model, frames: dict[str, list[Path]], classes: list[str], input_size: tuple[int, int]) -> dict:
    """Per category, how many of its frames get at least one box of that class at the manifest's threshold."""
    from edge.capture.decode import decode_image
    from edge.capture.frame_stats import detect_info_bars, trim_info_bars
    from train.detector_data import MANIFEST_THRESHOLD, MAX_SIDE, boxes_every_object
    from train.detector_eval import detect

    def boxes_of(paths: list[Path]) -> list:  # as the edge sees them: info bars cut
        pixels = []
        for path in paths:
            rgb = decode_image(path, max_side=MAX_SIDE).rgb
            pixels.append(trim_info_bars(rgb, *detect_info_bars(rgb)))
        return detect(model, pixels, input_size, MANIFEST_THRESHOLD)

    single = boxes_every_object(classes)
    out = {}
    for category, paths in frames.items():
        if single and category in ("person", "vehicle"):
            wanted = [0]
        elif category not in classes:
            continue
        else:  # an animal frame counts when it gets a person or vehicle box (a false alarm); others, a box of their class
            wanted = [classes.index(c) for c in (("person", "vehicle") if category == "animal" else (category,))
                      if c in classes]
        if not wanted:
            continue
        found = sum(bool(np.isin(d.class_id, wanted).any()) for d in boxes_of(paths))
        out["animal_as_person_or_vehicle" if category == "animal" else category] = {
            "frames": len(paths), "found": int(found), **({"any_box": True} if single else {})}
    return out


def _every_nth_image(records: list, n: int) -> list:
    """The records of every n-th image (all boxes of a kept image stay together)."""
    kept = set(list(dict.fromkeys(r.path for r in records))[::n])
    return [r for r in records if r.path in kept]


def species_root(config: TrainingConfig) -> Path:
    """The folder the species split's paths are saved relative to: the deepest one holding every species
    source's folder. With several datasets each key starts with its dataset's folder (two datasets'
    ``images/0001.jpg`` never collide); with one it is that dataset's folder, so its keys stay short."""
    parents = [config.resolve(source.path).parent for source in config.species]
    try:
        return Path(os.path.commonpath(parents))
    except ValueError:  # an absolute and a relative folder: compare them resolved
        return Path(os.path.commonpath([p.resolve() for p in parents]))


def _species_split(config: TrainingConfig) -> dict[Path, str]:
    """Resolved path → split of the saved species split (empty when there is none)."""
    path = config.out / "splits" / "species.csv"
    if not config.species or not path.exists():
        return {}
    root = species_root(config)
    return {(root / row.path).resolve(): row.split for row in load_split(path).rows}


def run(args: argparse.Namespace) -> int:
    from common.config_loader import ConfigError
    from train.checks import training_checks

    try:
        config = training_config(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1 if args.validate_config else 2
    steps = set(getattr(args, "steps", STEPS))
    problems, warnings = training_checks(config, args.weights, steps)  # before an hour of training, not after
    for line in warnings if not problems else []:
        print(line, file=sys.stderr)
    for line in problems:
        print(line if args.validate_config else f"train refused: {line}", file=sys.stderr)
    if args.validate_config:
        print("config OK" if not problems else f"{len(problems)} problem(s): fix them and run again",
              file=sys.stderr if problems else sys.stdout)
    if problems or args.validate_config:
        return 2 if problems else 0
    try:
        return _train(args, config)
    except StaleSplitError as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2


def _train(args: argparse.Namespace, config: TrainingConfig) -> int:
    start = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "config.json").write_text(config.model_dump_json(indent=2) + "\n")
    weights = path_of("efficientnet_lite0", args.weights)
    steps = set(getattr(args, "steps", STEPS))
    species = _step(config, "species", steps, lambda: species_step(config, weights, args.quick))
    reid = _step(config, "reid", steps, lambda: reid_step(config, weights, args.quick))
    detector = _step(config, "detector", steps, lambda: detector_step(config, args.weights, args.quick))
    seconds = round(time.perf_counter() - start, 1)
    figures = {"species": {k: species[k] for k in ("top1", "macro_f1", "n") if k in species} if species else None,
               "reid": reid, "detector": detector, "quick": args.quick, "seconds": seconds}
    write_report(config.out / "report", classifier=_report_classifier(species) if species else None,
                 roc=species.get("empty_vs_animal") if species else None, reid=reid, detector=detector,
                 notes=[f"profile: {'quick' if args.quick else 'full'}; wall time {seconds} s"])
    (config.out / "figures.json").write_text(json.dumps(figures, indent=2, default=_plain) + "\n")
    print(_summary(figures))
    print(_next_steps(config.out))
    return 0


def _next_steps(out: Path) -> str:
    """Where the report is and the command that turns the run into a bundle."""
    return (f"report: {out / 'report' / 'report.md'}  (figures: {out / 'figures.json'})\n"
            f"next: trapedge export --trained {out} --out bundles/trained  (or: make export RUN={out})\n"
            "      builds the bundle, gates INT8 against fp32 and evaluates it on the held-out images")


def _step(config: TrainingConfig, name: str, steps: set[str], train) -> dict | None:
    """Run one training step and save its result, or (not in ``steps``) read the last saved one."""
    saved = config.out / "steps" / f"{name}.json"
    if name not in steps:
        return json.loads(saved.read_text()) if saved.exists() else None
    result = train()
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(result, default=_plain) + "\n")
    return result


def _summary(figures: dict) -> str:
    lines = [f"trained in {figures['seconds']} s"]
    if figures["species"]:
        lines.append(f"  species (held-out bursts, whole frames): top-1 {figures['species']['top1']:.3f}, "
                     f"macro-F1 {figures['species']['macro_f1']:.3f}")
    for name, scores in (figures["reid"] or {}).items():
        trained = scores.get("trained", {})
        lines.append(f"  re-ID {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in trained.items()
                                                      if isinstance(v, float)))
    detector = figures["detector"]
    if detector:
        ap = detector["fine-tuned"]["ap50"]
        lines.append(f"  detector: ships {detector['kept']} ({', '.join(detector.get('why_not') or []) or 'no worse'}); "
                     "fine-tuned val AP50 " + ", ".join(f"{k} {v:.3f}" for k, v in ap.items()))
    return "\n".join(lines)


def _report_classifier(report: dict) -> dict:
    return {**report, "confusion": np.asarray(report["confusion"])}


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else str(value)

