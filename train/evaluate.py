"""``trapedge evaluate DIR --reference REF``: what the camera does, measured against a reference.

The images go through the edge's own pipeline (``edge.app.factory.build_analyzer``: the INT8
bundle by default, info bars, labels, failures exactly as the service has them; the motion gate
off, as a batch looks at every image). The reference is MegaDetector JSON, COCO / COCO Camera
Traps JSON, a YOLO folder or a CSV ``file,label``. Reported, per reference:

* boxes (when the reference has them): recall of reference boxes (IoU ≥ 0.5, by any box) and the
  share labelled with the right category, by category (animal, person, vehicle) and by size
  (normalised area: small < 0.01 ≤ medium < 0.1 ≤ large); precision of the camera's boxes per
  category; people labelled as animals;
* images: the empty / animal / person / vehicle confusion (a person anywhere makes a person image,
  then a vehicle, then an animal);
* species (when the reference labels species the bundle knows): top-1 and macro-F1 of the image's
  label (its best animal box's label, ``empty`` without one), per class.

Writes ``evaluation.json``, ``evaluation.md`` and PNG plots into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.config_loader import ConfigError
from common.progress import progress
from edge.analysis.analyzer import Analyzer, FrameFailure
from edge.analysis.labels import BLANK, WHOLE_FRAME, frame_prediction
from edge.analysis.pipeline import Pipeline
from edge.app.factory import build_analyzer
from edge.capture.decode import DEFAULT_MAX_SIDE, read_ahead
from edge.cli.options import add_model_arguments, command_config, fail, failure_lines
from edge.runtime.backends import BackendUnavailable
from edge.runtime.bundle import BundleError
from edge.runtime.yolox import box_iou
from train.box_matching import SIZES, size_of
from train.datasets import DatasetError, read_coco_camera_traps, read_csv, read_megadetector, read_yolo
from train.datasets.inventory import Inventory, read_json, understood
from train.labels import category_of
from train.records import Record

CATEGORIES = ("animal", "person", "vehicle")
IMAGE_CLASSES = ("empty", "animal", "person", "vehicle")
IOU = 0.5


@dataclass
class Annotated:
    """One image as the reference or the camera sees it: normalised ``[x, y, w, h]`` boxes with their
    labels (and scores, for the camera), and an image-level label when there is one."""

    path: Path
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    image_label: str | None = None

    @property
    def categories(self) -> list[str | None]:
        return [category_of(label) for label in self.labels]

    @property
    def image_class(self) -> str:
        """empty / animal / person / vehicle: the boxes' most sensitive category and the image label's."""
        found = set(self.categories) | {category_of(self.image_label or "empty")}
        return next((c for c in ("person", "vehicle", "animal") if c in found), "empty")


# --- the reference ---------------------------------------------------------------------------------
def read_reference(reference: Path, images: Path, *, threshold: float = 0.2,
                   event_pattern: str | None = None) -> tuple[list[Annotated], Inventory]:
    """The reference's images (under ``images``), with their boxes and labels.

    Raises:
        DatasetError: a reference file that is not the format it looks like (file and entry named).
    """
    if reference.is_dir():
        kind, read = "YOLO", lambda: read_yolo(reference, empty_files="unlabelled", event_pattern=event_pattern)
    elif reference.suffix.lower() == ".csv":
        kind, read = "CSV", lambda: read_csv(reference, images)
    elif "detection_categories" in read_json(reference):
        kind, read = "MegaDetector", lambda: read_megadetector(reference, images, threshold=threshold)
    else:
        kind, read = "COCO", lambda: read_coco_camera_traps(reference, images)
    with understood(reference, kind):
        inventory = read()
    return annotated(inventory), inventory


def annotated(records: Iterable[Record]) -> list[Annotated]:
    """Records (one per box, or one per unboxed image) as one ``Annotated`` per image, in order."""
    images: dict[Path, Annotated] = {}
    for record in records:
        image = images.setdefault(record.path, Annotated(record.path))
        if record.bbox is not None:
            image.boxes.append(record.bbox)
            image.labels.append(record.label or "animal")
        else:
            image.image_label = record.label if record.label is not None else most_sensitive(record.labels)
    return list(images.values())


def most_sensitive(labels: Sequence[str]) -> str | None:
    """Of an image's several labels (a CSV row per animal, ``Elk`` and ``Human``), the one whose category decides
    what the image is: a person before a vehicle before an animal before empty. Without it an image with two
    labels had none and was counted empty."""
    order = ("person", "vehicle", "animal", None)
    return min(labels, key=lambda label: order.index(category_of(label)), default=None)


# --- the camera -----------------------------------------------------------------------------------
def run_camera(analyzer: Analyzer, paths: Sequence[Path]) -> tuple[dict[Path, Annotated], dict[Path, str]]:
    """Each image through the analyzer (decoded one ahead, as the service runs): what it saw, and the images that
    failed."""
    found, failed = {}, {}
    jobs = ((path, "evaluate", str(path)) for path in paths)
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool, Pipeline(analyzer) as pipeline:
        frames = read_ahead(pool, jobs, DEFAULT_MAX_SIDE)
        for frame, result in progress(pipeline.results(frames), total=len(paths), desc="evaluate", unit="image"):
            path = Path(frame.key)
            if isinstance(result, FrameFailure):
                failed[path] = result.reason
            else:
                det = result.detections
                label, _, _ = frame_prediction(det)
                det = det[det.data["label_source"] != WHOLE_FRAME]  # a frame-sized label, not a detection
                found[path] = Annotated(path, [tuple(b) for b in det.normalised_xywh(result.rgb.shape[:2])],
                                        det.labels(), [float(c) for c in det.confidence],
                                        None if label == BLANK else label)
    return found, failed


# --- boxes ------------------------------------------------------------------------------------------
def _xyxy(boxes: Sequence[Sequence[float]]) -> np.ndarray:
    array = np.asarray(boxes, np.float64).reshape(-1, 4)
    return np.concatenate([array[:, :2], array[:, :2] + array[:, 2:]], axis=1)


def match(reference: Annotated, camera: Annotated, iou: float = IOU) -> dict[int, int]:
    """Reference box index -> camera box index, one to one: each camera box, best score first, takes
    the unmatched reference box it overlaps most, if by at least ``iou``."""
    ref, cam = _xyxy(reference.boxes), _xyxy(camera.boxes)
    pairs: dict[int, int] = {}
    for j in np.argsort(-np.asarray(camera.scores, np.float64), kind="stable"):
        if not len(ref):
            break
        overlaps = box_iou(cam[j], ref)
        overlaps[list(pairs)] = -1.0
        best = int(np.argmax(overlaps))
        if overlaps[best] >= iou:
            pairs[best] = int(j)
    return pairs


def box_figures(pairs: Sequence[tuple[Annotated, Annotated]]) -> dict[str, Any]:
    """Recall (found by any box / found and labelled with the right category) per category and size,
    precision per category, and people labelled as animals."""
    found: dict[tuple[str, str], list[int]] = {}  # (category, size) -> [boxes, found, right category]
    made: dict[str, list[int]] = {c: [0, 0] for c in CATEGORIES}  # camera boxes, matched
    people_as_animals = 0
    for reference, camera in pairs:
        matched, made_by = match(reference, camera), camera.categories
        for i, (box, category) in enumerate(zip(reference.boxes, reference.categories)):
            if category is None:
                continue
            cell = found.setdefault((category, size_of(box)), [0, 0, 0])
            cell[0] += 1
            if i in matched:
                got = made_by[matched[i]]
                cell[1] += 1
                cell[2] += got == category
                people_as_animals += category == "person" and got == "animal"
        for j, category in enumerate(made_by):
            if category is not None:
                made[category][0] += 1
                made[category][1] += j in matched.values()
    precision = {c: {"value": _ratio(m, n), "boxes": n} for c, (n, m) in made.items()}
    return {"recall": _recall_table(found), "precision": precision, "people_labelled_animal": people_as_animals,
            "pr_curves": pr_curves(pairs)}


def pr_curves(pairs: Sequence[tuple[Annotated, Annotated]], points: int = 200) -> dict[str, dict[str, list[float]]]:
    """Precision and recall of each category's boxes as the camera's score threshold rises from the
    bundle's own: a camera box is right when it took a reference box (``match``) of its category.

    Returns:
        ``{category: {"score": [...], "precision": [...], "recall": [...]}}`` (at most ``points``
        points each, scores falling) for every category with reference boxes.
    """
    curves = {}
    for category in CATEGORIES:
        truth = sum(c == category for ref, _ in pairs for c in ref.categories)
        if not truth:
            continue
        scored = []
        for reference, camera in pairs:
            taken = {j: i for i, j in match(reference, camera).items()}
            scored += [(score, j in taken and reference.categories[taken[j]] == category)
                       for j, (score, c) in enumerate(zip(camera.scores, camera.categories)) if c == category]
        scored.sort(key=lambda pair: -pair[0])
        right = np.cumsum([ok for _, ok in scored]) if scored else np.zeros(0)
        keep = np.unique(np.linspace(0, len(scored) - 1, min(points, len(scored))).astype(int)) if scored else []
        curves[category] = {"score": [round(scored[k][0], 4) for k in keep],
                            "precision": [round(float(right[k] / (k + 1)), 4) for k in keep],
                            "recall": [round(float(right[k] / truth), 4) for k in keep]}
    return curves


def plot_pr(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """The curves of ``pr_curves`` in one plot."""
    from train.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for category, curve in curves.items():
        ax.plot(curve["recall"], curve["precision"], label=category)
        if curve["recall"]:
            ax.scatter(curve["recall"][-1:], curve["precision"][-1:], s=18)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall of reference boxes (IoU ≥ 0.5)")
    ax.set_ylabel("precision of the camera's boxes")
    ax.set_title("Boxes: precision / recall as the threshold rises\n(dot: the bundle's own threshold)")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def _recall_table(found: dict[tuple[str, str], list[int]]) -> dict[str, dict[str, dict[str, Any]]]:
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for category in CATEGORIES:
        rows = {size: found.get((category, size), [0, 0, 0]) for size, _, _ in SIZES}
        rows["all"] = [sum(r[k] for r in rows.values()) for k in range(3)]
        table[category] = {size: {"boxes": n, "found": _ratio(f, n), "right_category": _ratio(r, n)}
                           for size, (n, f, r) in rows.items()}
    return table


# --- images and species -----------------------------------------------------------------------------
def image_confusion(pairs: Sequence[tuple[Annotated, Annotated]]) -> np.ndarray:
    """(4, 4) counts of reference image class (rows) against the camera's (columns)."""
    matrix = np.zeros((len(IMAGE_CLASSES), len(IMAGE_CLASSES)), np.int64)
    for reference, camera in pairs:
        matrix[IMAGE_CLASSES.index(reference.image_class), IMAGE_CLASSES.index(camera.image_class)] += 1
    return matrix


def comparable(label: str | None) -> str:
    """A label as species figures compare it: ``person``, ``vehicle`` and ``empty`` however spelt."""
    category = category_of(label or "empty")
    return "empty" if category is None else category if category != "animal" else label


def image_species(camera: Annotated) -> str:
    """The camera's label of an image (``frame_prediction``, as in its MegaDetector output), comparable."""
    return comparable(camera.image_label)


def species_figures(pairs: Sequence[tuple[Annotated, Annotated]], known: Sequence[str]) -> dict[str, Any] | None:
    """Top-1, macro-F1 and the per-class table over the images whose reference label the bundle knows
    (or ``empty``); None when there are none."""
    from train.metrics import classification_report

    names = {label.casefold(): comparable(label) for label in known} | {"empty": "empty", "blank": "empty"}
    truth, guess = [], []
    for reference, camera in pairs:
        label = reference.image_label or (reference.labels[0] if len(set(reference.labels)) == 1 else None)
        if label is not None and label.casefold() in names and names[label.casefold()] != "animal":
            # (a reference that says only "animal", as MegaDetector's does, names no species to score)
            truth.append(names[label.casefold()])
            guess.append(image_species(camera))
    if not truth:
        return None
    labels = sorted(set(truth) | set(guess))
    report = classification_report([labels.index(t) for t in truth], [labels.index(g) for g in guess], labels)
    return {"labels": labels, **report}


# --- the command -----------------------------------------------------------------------------------
def evaluate(analyzer: Analyzer, references: list[Annotated]) -> tuple[dict[str, Any], np.ndarray]:
    """Every figure of one reference, and the image confusion matrix."""
    camera, failed = run_camera(analyzer, [r.path for r in references])
    pairs = [(r, camera[r.path]) for r in references if r.path in camera]
    with_boxes = [(r, c) for r, c in pairs if r.boxes or r.image_class == "empty"]
    confusion = image_confusion(pairs)
    figures = {
        "images": len(references), "failed": len(failed), "failures": {str(p): why for p, why in failed.items()},
        "boxes": box_figures(with_boxes) if any(r.boxes for r, _ in pairs) else None,
        "image_classes": {"labels": list(IMAGE_CLASSES), "confusion": confusion.tolist(),
                          "empty_kept_out": _kept_out(confusion), "animal_found": _animal_found(confusion)},
        "species": species_figures(pairs, analyzer.labels),
    }
    return figures, confusion


def _kept_out(confusion: np.ndarray) -> float | None:
    empty = confusion[0].sum()
    return round(float(confusion[0, 0] / empty), 4) if empty else None


def _animal_found(confusion: np.ndarray) -> float | None:
    animal = confusion[1].sum()
    return round(float(confusion[1, 1:].sum() / animal), 4) if animal else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="the images the reference's paths are relative to")
    parser.add_argument("--reference", type=Path, required=True,
                        help="MegaDetector JSON, COCO / COCO Camera Traps JSON, YOLO folder or CSV file,label")
    parser.add_argument("--out", type=Path, default=Path("results/evaluate"), help="report folder")
    parser.add_argument("--md-threshold", type=float, default=0.2, help="MegaDetector reference: lowest box kept")
    parser.add_argument("--event-pattern", default=None, help="YOLO reference: regex of the sequence in file names")
    parser.add_argument("--split", type=Path, help="a split saved by `trapedge train` (runs/trained/splits/*.csv): "
                                                   "evaluate only its --subset images")
    parser.add_argument("--subset", default="test", help="which part of --split (default: test, the held-out images)")
    add_model_arguments(parser)


def in_split(references: list[Annotated], split: Path, subset: str) -> list[Annotated]:
    """The references whose path ends with a path of ``split`` (a saved split CSV) in ``subset``.

    Raises:
        DatasetError: the split is unreadable or has no ``subset`` row.
    """
    from train.splits import load_split

    try:
        rows = load_split(split).rows
    except (OSError, ValueError, KeyError) as exc:
        raise DatasetError(split, "split", f"not a saved split ({exc})") from None
    wanted = {row.path for row in rows if row.split == subset}
    if not wanted:
        raise DatasetError(split, "split", f"has no {subset!r} images (splits: {sorted({r.split for r in rows})})")

    def suffixes(path: Path) -> set[str]:
        parts = path.as_posix().split("/")
        return {"/".join(parts[i:]) for i in range(len(parts))}

    return [r for r in references if suffixes(r.path) & wanted]


def run(args: argparse.Namespace) -> int:
    if not args.folder.is_dir():
        return fail("evaluate", f"{args.folder} is not a folder")
    try:
        references, inventory = read_reference(args.reference, args.folder, threshold=args.md_threshold,
                                               event_pattern=args.event_pattern)
        if args.split:
            references = in_split(references, args.split, args.subset)
        config = command_config(args, args.folder, gate={"enabled": False})
        analyzer = build_analyzer(config)
    except (DatasetError, ConfigError, BundleError, BackendUnavailable, FileNotFoundError) as exc:
        return fail("evaluate", exc)
    if not references:
        return fail("evaluate", f"{args.reference} names no image that exists under {args.folder}")
    figures, confusion = evaluate(analyzer, references)
    figures["reference"] = {"path": str(args.reference), "problems": inventory.problem_counts(),
                            "split": {"path": str(args.split), "subset": args.subset} if args.split else None}
    figures["bundle"] = {"path": str(config.bundle.path), "precision": config.bundle.precision}
    write(args.out, figures, confusion)
    print(summary_line(figures) + f" -> {args.out}")
    for line in failure_lines(figures["failures"].items(), "evaluation.json"):
        print(line)
    if note := reference_note(figures["reference"]["problems"]):
        print(note)
    return 0


def reference_note(problems: dict[str, int]) -> str:
    """One line on the reference entries that were not scored as given (empty when there are none):
    a repeated box counts once, an unlabelled or missing image not at all."""
    if not problems:
        return ""
    meaning = {"duplicate": "repeated, counted once", "missing": "image not found", "unlabelled": "no label"}
    parts = [f"{n} {kind} ({meaning[kind]})" if kind in meaning else f"{n} {kind}" for kind, n in sorted(problems.items())]
    return "reference entries not scored as given: " + ", ".join(parts)


def summary_line(figures: dict[str, Any]) -> str:
    """One line: images, animal box recall, people labelled as animals, species top-1."""
    parts = [f"{figures['images']} images ({figures['failed']} failed)"]
    if figures["boxes"]:
        animal = figures["boxes"]["recall"]["animal"]["all"]
        parts.append(f"animal boxes found {animal['found']} of {animal['boxes']}")
        parts.append(f"people labelled animal {figures['boxes']['people_labelled_animal']}")
    if figures["species"]:
        species = figures["species"]
        parts.append(f"species top-1 {species['top1']:.3f} macro-F1 {species['macro_f1']:.3f} "
                     f"({species['macro_f1_reference']:.3f} over the reference's classes)")
    return ", ".join(parts)


def write(out: Path, figures: dict[str, Any], confusion: np.ndarray) -> None:
    """``evaluation.json``, ``evaluation.md`` and the confusion-matrix PNGs."""
    from train.report import plot_confusion

    out.mkdir(parents=True, exist_ok=True)
    (out / "evaluation.json").write_text(json.dumps(figures, indent=1) + "\n")
    plot_confusion(confusion, list(IMAGE_CLASSES), out / "image_classes.png", "Images: reference (rows) vs camera")
    if figures["boxes"] and figures["boxes"]["pr_curves"]:
        plot_pr(figures["boxes"]["pr_curves"], out / "pr_curves.png")
    species = figures["species"]
    if species:
        plot_confusion(np.asarray(species["confusion"]), species["labels"], out / "species.png",
                       "Species: reference (rows) vs camera")
    (out / "evaluation.md").write_text(markdown(figures))


def markdown(figures: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = ["# What the camera does", "", summary_line(figures), ""]
    if failures := figures.get("failures"):  # the model card's held-out figures keep only their count
        lines += ["Images the camera could not analyse:", "",
                  *(f"- {line.removeprefix('  failed: ')}" for line in failure_lines(failures.items(), "evaluation.json")),
                  ""]
    if note := reference_note(figures.get("reference", {}).get("problems", {})):
        lines += [note[0].upper() + note[1:] + ".", ""]
    if figures["boxes"]:
        lines += ["## Boxes (IoU ≥ 0.5)", "", "| category | size | boxes | found | right category |",
                  "|---|---|---|---|---|"]
        for category, rows in figures["boxes"]["recall"].items():
            lines += [f"| {category} | {size} | {r['boxes']} | {r['found']} | {r['right_category']} |"
                      for size, r in rows.items() if r["boxes"]]
        lines += ["", "| camera category | boxes | precision |", "|---|---|---|"]
        lines += [f"| {c} | {p['boxes']} | {p['value']} |" for c, p in figures["boxes"]["precision"].items()]
        lines += ["", f"People labelled as animals: {figures['boxes']['people_labelled_animal']}", ""]
        if figures["boxes"]["pr_curves"]:
            lines += ["![](pr_curves.png)", ""]
    classes = figures["image_classes"]
    lines += ["## Images", "", f"Empty images kept out: {classes['empty_kept_out']}; images with an animal "
              f"called non-empty: {classes['animal_found']}", "", "![](image_classes.png)", ""]
    if figures["species"]:
        species = figures["species"]
        lines += ["## Species", "", f"top-1 {species['top1']:.3f}, macro-F1 {species['macro_f1']:.3f} over "
                  f"{species['n']} images (the classes of the reference and of the camera's labels; "
                  f"{species['macro_f1_reference']:.3f} over the reference's classes alone)", "",
                  "![](species.png)", ""]
    return "\n".join(lines)
