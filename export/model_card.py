"""The bundle's model card: what it is, how it was checked, and what the camera does with it on
held-out images of each source (the ``evaluation`` of the manifest, measured by ``trapedge evaluate``
through the bundle's own INT8 pipeline)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.runtime.manifest import Manifest


def _pct(value: Any) -> str:
    return "–" if value is None else f"{float(value):.3f}"


def _row(name: str, figures: dict[str, Any]) -> str:
    boxes, classes, species = figures.get("boxes") or {}, figures["image_classes"], figures.get("species") or {}
    recall = boxes.get("recall", {})
    animal, person = recall.get("animal", {}), recall.get("person", {})

    def cell(table: dict, size: str, key: str = "found") -> str:
        row = table.get(size) or {}
        return f"{_pct(row.get(key))} ({row['boxes']})" if row.get("boxes") else "–"

    confusion = classes["confusion"]
    people = sum(confusion[2]) if len(confusion) > 2 else 0
    animals = sum(confusion[1]) if len(confusion) > 2 else 0
    return " | ".join([
        f"| {name}", str(figures["images"]), cell(animal, "all"), cell(animal, "small"), cell(animal, "medium"),
        cell(animal, "large"), cell(person, "all", "right_category"),
        str(boxes.get("people_labelled_animal", "–")) if boxes else "–",
        f"{confusion[2][2]}/{people}" if people else "–",
        f"{confusion[1][2]}/{animals}" if animals else "–",  # blurred, never embedded, no animal alert
        _pct(classes.get("empty_kept_out")), _pct(classes.get("animal_found")),
        f"{_pct(species.get('top1'))} / {_pct(species.get('macro_f1'))} ({_pct(species.get('macro_f1_reference'))})"
        if species else "–",
    ]) + " |"


def model_card(manifest: Manifest) -> str:
    """Markdown: models, INT8 gates and the held-out table."""
    lines = [f"# Model card: {manifest.name} {manifest.version}", "", f"Created {manifest.created}.", "",
             "## Models", ""]
    for task, spec in manifest.models.items():
        lines.append(f"- **{task}**: {spec.architecture}; labels: {', '.join(spec.labels[:30])}"
                     + (" …" if len(spec.labels) > 30 else ""))
    failed = [name for name, gate in manifest.gates.items() if isinstance(gate, dict) and not gate.get("passed")]
    lines += ["", f"## INT8 gates: {len(manifest.gates) - len(failed)} of {len(manifest.gates)} passed", ""]
    lines += [f"- {name}: {gate['value']:.4g} (limit {gate['limit']:g})" for name, gate in manifest.gates.items()
              if isinstance(gate, dict)]
    if manifest.evaluation:
        lines += ["", *camera_section(manifest.evaluation)]
    return "\n".join(lines) + "\n"


def camera_section(evaluation: dict[str, Any], bundle: str = "this bundle") -> list[str]:
    """Markdown lines: what the camera does on each source's held-out images (the model card's and the
    training report's one table)."""
    lines = ["## What the camera does on held-out images", "",
             f"Each source's test split (fixed by `trapedge train` before any tuning, never trained on), run "
             f"through {bundle}'s INT8 pipeline with info bars detected: `trapedge evaluate`. Box recall "
             "at IoU ≥ 0.5 (boxes in brackets); sizes by area share: small < 1 % ≤ medium < 10 % ≤ large. "
             "Macro-F1 averages the classes of the reference and of the camera's labels; in brackets, the "
             "reference's classes alone (a label only ever predicted is not a class of F1 0 again). An animal "
             "frame called person is blurred, never embedded and raises no animal alert.", "",
             "| source | images | animal boxes found | small | medium | large | person boxes labelled person "
             "| people labelled animal | person frames called person | animal frames called person "
             "| empties kept out | animal frames non-empty | species top-1 / macro-F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    return lines + [_row(name, figures) for name, figures in evaluation.items() if isinstance(figures, dict)]


CAMERA_START, CAMERA_END = "<!-- camera: written by trapedge export -->", "<!-- /camera -->"


def add_camera_section(report: Path, evaluation: dict[str, Any], bundle: str) -> None:
    """Put the camera's held-out table at the top of a training report (replacing an earlier one), so
    the report leads with what the camera does, not with the training's whole-frame checks."""
    text = report.read_text() if report.is_file() else "# trapedge training report\n"
    if CAMERA_START in text and CAMERA_END in text:
        head, rest = text.split(CAMERA_START, 1)
        text = head + rest.split(CAMERA_END, 1)[1].lstrip("\n")
    title, _, body = text.partition("\n")
    section = "\n".join([CAMERA_START, *camera_section(evaluation, f"`{bundle}`"), CAMERA_END])
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(f"{title}\n\n{section}\n\n{body.lstrip()}")
