"""What ``trapedge train`` needs beyond a config that parses, checked before anything trains.

``trapedge train --validate-config`` prints each problem as one line that says what to do (exit 2),
and ``trapedge train`` refuses to start on the same lines, so a run never fails after an hour of
training on something a look at the data would have shown. Checked: the pretrained weights, a
writable run folder, every dataset readable with images in it, a species split with enough images
in train and val to calibrate and gate the INT8 bundle (``export.calibration``), every class in
train, enough stations for ``split_by: location``, and enough individuals for re-ID.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from common.config_loader import writable_folder
from train.config import TrainingConfig

MIN_CALIBRATION = 32  # train-split images: fewer and the INT8 activation ranges are a guess (export.calibration)
MIN_CHECK = 24  # val-split images: fewer and the INT8 gates decide on a handful of frames
MIN_STATIONS = 3  # split_by: location puts whole stations in train, val and test
MIN_INDIVIDUALS_TRAIN = 4  # the embedder learns from some and stops early on others (85 / 15 by individual)
MIN_INDIVIDUALS_EVAL = 2  # retrieval ranks an individual against at least one other
MIN_IMAGES_PER_INDIVIDUAL = 2  # a query and its match


def weights_problems(config: TrainingConfig, weights: Path, steps: set[str]) -> list[str]:
    """The pretrained weights the steps start from (the classifier's backbone may be another)."""
    from train.pretrained import path_of

    needed = {"efficientnet_lite0"} if steps & {"species", "reid"} else set()
    if "species" in steps and config.classifier.get("backbone"):
        needed.add(str(config.classifier["backbone"]))
    needed |= {"yolox_tiny_camera_trap"} if "detector" in steps else set()
    problems = []
    for name in sorted(needed):
        try:
            path_of(name, weights)
        except FileNotFoundError as exc:
            problems.append(f"weights: {exc}")
        except KeyError:
            problems.append(f"classifier.backbone: unknown weights {name!r}")
    return problems


def species_checks(config: TrainingConfig) -> tuple[list[str], list[str]]:
    """(problems, warnings) of the species data, read and split once as training will: every source
    readable, a split with enough images for training and the INT8 bundle; a warning for classes with
    no training image (all in one burst or station), which train but are never learnt."""
    from train.config import read_species
    from train.splits import DEFAULT_FRACTIONS, FRAME_NUMBER, split_records

    try:
        records, _ = read_species(config)
    except (FileNotFoundError, ValueError) as exc:
        return [f"species: {exc}"], []
    if not records:
        return ["species: no labelled images in the species sources: check their paths and label columns "
                "(`trapedge inventory --config ...` shows what is read)"], []
    if config.split_by == "location":
        stations = Counter(r.location for r in records)
        if None in stations:
            return [f"split_by: location, but {stations[None]} of {len(records)} images have no station: add a "
                    "location column (or class_level: 2 for Station/Species folders), or use split_by: event"], []
        if len(stations) < MIN_STATIONS:
            return [f"split_by: location needs at least {MIN_STATIONS} stations (train, val and test each get whole "
                    f"ones); found {len(stations)} ({', '.join(sorted(map(str, stations)))}): use split_by: event or "
                    "add stations"], []
    try:
        splits = split_records(records, config.split_by, DEFAULT_FRACTIONS, config.seed,
                               sequence_from_filename=FRAME_NUMBER)
    except ValueError as exc:
        return [f"species: cannot split: {exc}"], []
    problems, warnings = [], []
    counts = {name: len({r.path for r in rs}) for name, rs in splits.items()}
    shares = "/".join(f"{round(f * 100)}" for f in DEFAULT_FRACTIONS.values())
    if counts["train"] < MIN_CALIBRATION or counts["val"] < MIN_CHECK or counts["test"] < 1:
        problems.append(f"species: {len(records)} images split {counts['train']} train / {counts['val']} val / "
                        f"{counts['test']} test ({shares}, whole bursts); the bundle needs at least {MIN_CALIBRATION} "
                        f"in train (INT8 calibration), {MIN_CHECK} in val (INT8 gates) and 1 in test: add photos")
    absent = sorted({r.label for r in records} - {r.label for r in splits["train"]})
    if absent:
        warnings.append(f"warning: species: {len(absent)} class(es) have no image in train ({', '.join(absent[:8])}"
                        f"{' ...' if len(absent) > 8 else ''}: all their images are in one burst or station), so the "
                        "classifier never learns them: add photos from other bursts, or drop them in labelmap.drop")
    return problems, warnings


def reid_problems(config: TrainingConfig) -> list[str]:
    """Enough individuals, each seen at least twice, to train the embedder and to evaluate it."""
    from train.config import read_reid

    problems = []
    for key, sources, least in (("reid_train", config.reid_train, MIN_INDIVIDUALS_TRAIN),
                                ("reid_eval", config.reid_eval, MIN_INDIVIDUALS_EVAL)):
        try:
            found = read_reid(config, sources)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"{key}: {exc}")
            continue
        sets = found.values() if key == "reid_eval" else [[r for rs in found.values() for r in rs]] if found else []
        names = list(found) if key == "reid_eval" else ["the training individuals"]
        for name, records in zip(names, sets):
            seen = Counter(r.individual for r in records)
            usable = [i for i, n in seen.items() if n >= MIN_IMAGES_PER_INDIVIDUAL]
            if len(usable) < least:
                problems.append(f"{key}: {name}: {len(usable)} individual(s) with at least {MIN_IMAGES_PER_INDIVIDUAL} "
                                f"images ({len(seen)} folders); re-ID needs at least {least}: add individuals (one "
                                "folder each) or remove the source")
    if config.reid_eval and not config.reid_train:
        problems.append("reid_eval: held-out individuals but no reid_train: add reid_train sources or remove reid_eval")
    return problems


def box_problems(config: TrainingConfig) -> list[str]:
    """Every box source readable, with boxes in it, each of whose labels has a detector class."""
    from train.config import box_inventory
    from train.detector_data import detector_class

    problems = []
    for source in config.boxes:
        try:
            name, inventory = box_inventory(config, source)
        except (FileNotFoundError, ValueError) as exc:
            problems.append(f"boxes: {exc}")
            continue
        if not any(r.bbox is not None for r in inventory.records):
            problems.append(f"boxes: {name}: no boxes read: check its format and path")
        unmapped = set()
        for label in {r.label or "|".join(r.labels) for r in inventory.records}:
            try:
                detector_class(label, config.detector_classes)
            except ValueError:
                unmapped.add(label)
        if unmapped:
            problems.append(f"boxes: {name}: labels {sorted(unmapped)} need a detector class missing from "
                            f"detector_classes {config.detector_classes}: add it, or use [animal] (one class "
                            "that boxes people and vehicles too)")
    return problems


def crop_bundle_problems(bundle: Path) -> list[str]:
    """The bundle whose detector cuts the classifier's training crops (``crops: detector``) loads."""
    from edge.runtime.bundle import BundleError, load_bundle

    try:
        load_bundle(bundle)  # a missing, half-copied or altered bundle: its one-line reason
    except BundleError as exc:
        return [f"crop_bundle: {exc}; crops: detector cuts the training crops with its detector (set crop_bundle: to "
                "another bundle, or crops: boxes to train on whole frames)"]
    return []


def training_checks(config: TrainingConfig, weights: Path = Path("models"),
                    steps: set[str] = frozenset({"species", "reid", "detector"})) -> tuple[list[str], list[str]]:
    """(problems, warnings): every problem ``trapedge train`` would meet, and what trains but will
    disappoint; one line each (no problems: ready to train)."""
    problems, warnings = weights_problems(config, weights, steps), []
    if not writable_folder(config.out / "config.json"):  # the first file a run writes
        problems.append(f"out: {config.out} is not writable by this user: choose another folder")
    if "species" in steps and config.species:
        species_problems, warnings = species_checks(config)
        problems += species_problems
        if config.crops == "detector":
            problems += crop_bundle_problems(config.crop_bundle)
    if "reid" in steps and (config.reid_train or config.reid_eval):
        problems += reid_problems(config)
    if "detector" in steps:
        problems += box_problems(config)
    return problems, warnings
