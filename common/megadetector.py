"""Checks a MegaDetector batch-output document the way MegaDetector's own validator does.

``common/schemas/megadetector_batch.schema.json`` holds what a JSON Schema can say about the format
(https://lila.science/megadetector-output-format, versions 1.3 to 1.6); ``batch_problems`` adds the
checks of ``megadetector/postprocessing/validate_batch_results.py`` that a schema cannot express:
category ids present in the category maps, ``conf`` written as a float, format 1.6 and later
carrying its version as a string, a video (format 1.4 and later) carrying ``frame_rate``,
``frames_processed`` and a ``frame_number`` on each detection, and (stricter than that validator)
boxes inside the image and frame numbers among the frames processed.
jsonschema is imported only here, so the edge, which writes these documents, does not need it.
"""

from __future__ import annotations

import json
from importlib import resources

BOX_SLACK = 1e-3  # rounding to 4 decimals may push x + width a hair past 1
# MegaDetector's is_video_file (megadetector/detection/video_utils.py): the files its validator holds to the video fields
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mpeg", ".mpg", ".mov", ".mkv", ".flv")


def load_batch_schema() -> dict:
    """The JSON Schema (draft 2020-12) of a MegaDetector batch-output document."""
    text = resources.files("common").joinpath("schemas", "megadetector_batch.schema.json").read_text("utf-8")
    return json.loads(text)


def batch_problems(document: dict) -> list[str]:
    """Every reason ``document`` is not valid MegaDetector batch output (empty: valid)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_batch_schema())
    problems = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
                for e in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path)))]
    return problems or _semantic_problems(document)


def _semantic_problems(document: dict) -> list[str]:
    version = document["info"]["format_version"]
    problems = [] if float(version) < 1.6 or isinstance(version, str) else ["info/format_version: must be a string"]
    detection_ids = set(document["detection_categories"])
    classification_ids = set(document.get("classification_categories") or {})
    for i, image in enumerate(document["images"]):
        for j, detection in enumerate(image.get("detections") or []):
            problems += [f"images/{i}/detections/{j}: {p}"
                         for p in _detection_problems(detection, detection_ids, classification_ids)]
        if float(version) >= 1.4 and image["file"].lower().endswith(VIDEO_EXTENSIONS):
            problems += [f"images/{i}: {p}" for p in _video_problems(image)]
    return problems


def _video_problems(image: dict) -> list[str]:
    """A processed video needs its frame rate, the frames processed and each detection's frame number
    among them. (MegaDetector's validator asks a failed video for a frame rate too; a file that never
    opened has none to give, so a failure needs only its reason.)"""
    if image.get("failure") is not None:
        return []
    problems = [f"a video needs {name}" for name in ("frame_rate", "frames_processed") if name not in image]
    processed = set(image.get("frames_processed") or ())
    for j, detection in enumerate(image.get("detections") or []):
        if "frame_number" not in detection:
            problems.append(f"detections/{j}: a video's detection needs frame_number")
        elif detection["frame_number"] not in processed:
            problems.append(f"detections/{j}: frame_number {detection['frame_number']} is not in frames_processed")
    return problems


def _detection_problems(detection: dict, detection_ids: set[str], classification_ids: set[str]) -> list[str]:
    problems = []
    if detection["category"] not in detection_ids:
        problems.append(f"category {detection['category']!r} is not in detection_categories")
    if not isinstance(detection["conf"], float):
        problems.append(f"conf {detection['conf']!r} is not a float")
    x, y, width, height = detection["bbox"]
    if x + width > 1 + BOX_SLACK or y + height > 1 + BOX_SLACK:
        problems.append(f"bbox {detection['bbox']} reaches outside the image")
    for category, _ in detection.get("classifications") or []:
        if category not in classification_ids:
            problems.append(f"classification category {category!r} is not in classification_categories")
    return problems
