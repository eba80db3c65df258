"""Print a short table of a MegaDetector results file: per image, its best box and species.

``python -m edge.summary results.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def summarise(document: dict, threshold: float | None = None) -> list[str]:
    """One line per image: file, number of boxes over ``threshold``, best score and top species."""
    threshold = document["info"]["detector_metadata"]["typical_detection_threshold"] if threshold is None else threshold
    species = document.get("classification_categories", {})
    lines = []
    for entry in document["images"]:
        if entry.get("failure"):
            lines.append(f"{entry['file']:<45} FAILED: {entry['failure']}")
            continue
        boxes = [d for d in entry["detections"] if d["conf"] >= threshold]
        if not boxes:
            lines.append(f"{entry['file']:<45} empty")
            continue
        best = max(boxes, key=lambda d: d["conf"])
        label = ""
        if best.get("classifications"):
            key, prob = best["classifications"][0]
            label = f"{species.get(key, key)} ({prob:.2f})"
        lines.append(f"{entry['file']:<45} {len(boxes)} box(es), best {best['conf']:.2f} {label}")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    document = json.loads(Path(argv[0]).read_text())
    print("\n".join(summarise(document)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
