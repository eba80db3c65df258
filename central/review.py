"""What the review UI shows and does, as plain functions over the store and the matcher.

The web layer (``central.web``) only turns these into HTTP; tests can call them directly.
"""

from __future__ import annotations

from dataclasses import asdict

from central.graph import build
from central.matching import Matcher
from central.store import CentralStore

VERDICTS = ("match", "no_match")


def anchor_view(store: CentralStore, matcher: Matcher, anchor_id: str | None = None) -> dict:
    """The anchor to review (the oldest unreviewed one unless given) with its live candidates."""
    waiting = store.count("sightings", "reviewed = 0 AND quarantined IS NULL")
    anchor_id = anchor_id or next(iter(store.queue(limit=1)), None)
    anchor = store.sighting(anchor_id) if anchor_id else None
    if anchor is None:
        return {"anchor": None, "queue": waiting, "candidates": [], "conflicts": conflicts_view(store)}
    individuals, _, _ = matcher.state()
    members = individuals.members()
    candidates = [{**asdict(c), "images": _images(members.get(c.individual, [c.image_id]), c.image_id, store)}
                  for c in matcher.propose(anchor)]
    return {"anchor": _image(anchor), "queue": waiting, "candidates": candidates,
            "individual": individuals.find(anchor.id), "conflicts": conflicts_view(store)}


def _image(sighting) -> dict:
    return {"id": sighting.id, "name": sighting.name or sighting.id, "device": sighting.device,
            "time": sighting.frame_time, "label": sighting.label,
            "crop": sighting.crop_jpeg is not None, "edge": sighting.edge_jpeg is not None}


def _images(members: list[str], best: str, store: CentralStore, limit: int = 4) -> list[dict]:
    """The candidate's best image first, then up to ``limit - 1`` other images of the individual."""
    ordered = [best] + [m for m in sorted(members) if m != best][: limit - 1]
    return [_image(s) for s in (store.sighting(i) for i in ordered) if s is not None]


def decide(store: CentralStore, anchor_id: str, candidate_id: str, verdict: str) -> None:
    """Record a verdict (with the pair's cosine, which calibrates confidences); a match ends the anchor.

    Raises:
        ValueError: unknown verdict or image.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    anchor, candidate = store.sighting(anchor_id), store.sighting(candidate_id)
    if anchor is None or candidate is None or anchor_id == candidate_id:
        raise ValueError("anchor and candidate must be two different stored images")
    same_space = anchor.model == candidate.model and anchor.vector.size == candidate.vector.size
    cosine = float(anchor.vector @ candidate.vector) if same_space else None
    store.decide(anchor_id, candidate_id, verdict, cosine)
    if verdict == "match":
        store.mark_reviewed(anchor_id)


def conflicts_view(store: CentralStore) -> list[dict]:
    """Every ``no_match`` verdict between two images that confirmed links put in one individual."""
    _, conflicts = build(store.decisions())
    return [asdict(c) for c in conflicts]
