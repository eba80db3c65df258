"""Individuals as the review pages browse them: a search over them and one individual's page.

An individual is a connected component of confirmed links (``central.graph``); an image nobody has
linked yet is an individual of its own. Pages name an individual by any of its images' ids (that
id keeps naming it as links are added), and title it by the known identity most of its enrolled
images carry, else by its root image.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone

from central.enroll import UNKNOWN_TIME
from central.graph import Individuals, build
from central.ingest import instant
from central.review import image_view
from central.store import CentralStore, ImageInfo


def _groups(store: CentralStore) -> tuple[Individuals, dict[str, list[ImageInfo]]]:
    individuals, _ = build(store.decisions())
    groups: dict[str, list[ImageInfo]] = {}
    for image in store.image_index():
        groups.setdefault(individuals.find(image.id), []).append(image)
    return individuals, groups


def _when(text: str) -> datetime:
    """For ordering by the clock: 06:00+10:00 comes before 05:00Z the same date (compared as text, after). A
    time stored before ingest checked times comes first."""
    try:
        return instant(text)
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def _summary(root: str, images: list[ImageInfo]) -> dict:
    known = Counter(i.individual for i in images if i.individual)
    times = sorted((i.frame_time for i in images if i.frame_time != UNKNOWN_TIME), key=_when)
    return {"id": root, "name": known.most_common(1)[0][0] if known else root, "count": len(images),
            "first_seen": times[0] if times else None, "last_seen": times[-1] if times else None,
            "devices": sorted({i.device for i in images}),
            "cover": next((i.id for i in images if i.has_crop), images[0].id)}


def search_individuals(store: CentralStore, query: str, limit: int = 20) -> list[dict]:
    """Individuals whose name, id or an image's id or file name contains ``query`` (any case); linked
    individuals (more images) first, then by name."""
    needle = query.strip().lower()
    if not needle:
        return []
    _, groups = _groups(store)
    found = []
    for root, images in groups.items():
        summary = _summary(root, images)
        words = [summary["name"], root] + [w for i in images for w in (i.id, i.name or "")]
        if any(needle in w.lower() for w in words):
            found.append(summary)
    found.sort(key=lambda s: (-s["count"], s["name"].lower()))
    return found[:limit]


def individual_view(store: CentralStore, image_id: str, locations: dict[str, str] | None = None) -> dict | None:
    """The individual ``image_id`` belongs to: every image (oldest first) with its date, camera and
    location, when it was first and last seen, and the confirmed links that made it. None: unknown image."""
    individuals, groups = _groups(store)
    root = individuals.find(image_id)
    images = groups.get(root)
    if not images:
        return None
    members = {i.id for i in images}
    links = [{"anchor": d.anchor_id, "candidate": d.candidate_id, "verdict": d.verdict, "at": d.at}
             for d in store.decisions() if d.anchor_id in members or d.candidate_id in members]
    ordered = sorted(images, key=lambda i: _when(i.frame_time))
    return _summary(root, images) | {"images": [image_view(i, locations or {}) for i in ordered], "decisions": links}
