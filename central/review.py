"""What the review UI shows and does, as plain functions over the store and the matcher.

The web layer (``central.web``) only turns these into HTTP; tests can call them directly. Every
step a researcher takes (a verdict, "done", a skip) is recorded so that ``undo`` can revert it;
paging through the queue changes nothing.
"""

from __future__ import annotations

from dataclasses import asdict

from central.enroll import UNKNOWN_TIME
from central.graph import build
from central.matching import Matcher
from central.store import CentralStore, ImageInfo

VERDICTS = ("match", "no_match")


def anchor_view(store: CentralStore, matcher: Matcher, anchor_id: str | None = None,
                locations: dict[str, str] | None = None) -> dict:
    """The anchor to review (the first in the queue unless given) with its live candidates.

    Candidates are listed most probable first, so that their rank and their P(same) agree: ``p_same``
    is the matcher's own field when it has one, else its ``confidence``.
    """
    locations = locations or {}
    waiting = store.count("sightings", "reviewed = 0 AND quarantined IS NULL")
    anchor_id = anchor_id or next(iter(store.queue(limit=1)), None)
    anchor = store.sighting(anchor_id) if anchor_id else None
    view = {"anchor": None, "queue": waiting, "position": None, "candidates": [], "conflicts": conflicts_view(store),
            "can_undo": any(step.undone_at is None for step in store.history(1))}
    if anchor is None:
        return view
    individuals, _, _ = matcher.state()
    members = individuals.members()
    found, policy = _proposal(matcher, anchor)
    candidates = []
    for c in (asdict(c) for c in found):
        images = _images(members.get(c["individual"], [c["image_id"]]), c["image_id"], store, locations)
        candidates.append({**c, "p_same": float(c.get("p_same", c["confidence"])), "images": images})
    candidates.sort(key=lambda c: -c["p_same"])
    for rank, c in enumerate(candidates, 1):
        c["rank"] = rank
    return view | policy | {"anchor": image_view(anchor, locations), "position": store.queue_position(anchor.id),
                            "candidates": candidates, "individual": individuals.find(anchor.id)}


def _proposal(matcher: Matcher, anchor) -> tuple[list, dict]:
    """The candidates, and P(new individual) with the open-set policy's answer where the matcher gives them."""
    if not hasattr(matcher, "proposal"):
        return matcher.propose(anchor), {}
    proposal = matcher.proposal(anchor)
    extra = {key: getattr(proposal, key) for key in ("p_new", "new_individual", "calibration") if hasattr(proposal, key)}
    return proposal.candidates, extra


def image_view(image, locations: dict[str, str]) -> dict:
    """One image as the pages show it (a ``Sighting`` or an ``ImageInfo``)."""
    has_crop = image.has_crop if isinstance(image, ImageInfo) else image.crop_jpeg is not None
    has_edge = image.has_edge if isinstance(image, ImageInfo) else image.edge_jpeg is not None
    time = None if image.frame_time == UNKNOWN_TIME else image.frame_time  # enrolled without any time
    return {"id": image.id, "name": image.name or image.id, "device": image.device, "time": time,
            "location": locations.get(image.device), "label": image.label, "crop": has_crop, "edge": has_edge}


def _images(members: list[str], best: str, store: CentralStore, locations: dict[str, str],
            limit: int = 4) -> list[dict]:
    """The candidate's best image first, then up to ``limit - 1`` other images of the individual."""
    ordered = [best] + [m for m in sorted(members) if m != best][: limit - 1]
    return [image_view(s, locations) for s in (store.sighting(i) for i in ordered) if s is not None]


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
    store.record_verdict(anchor_id, candidate_id, verdict, cosine, done=verdict == "match")


def following(store: CentralStore, anchor_id: str) -> str | None:
    """The anchor to show after ``anchor_id`` leaves its place in the queue (None: the queue's first)."""
    after = store.queue_neighbour(anchor_id, 1)
    return None if after == anchor_id else after


def undo(store: CentralStore) -> dict | None:
    """Revert the latest review step; what was undone (the page shows its anchor again), or None."""
    step = store.undo()
    return None if step is None else {"action": step.action, "anchor": step.anchor_id, "candidate": step.candidate_id}


def conflicts_view(store: CentralStore) -> list[dict]:
    """Every ``no_match`` verdict between two images that confirmed links put in one individual."""
    _, conflicts = build(store.decisions())
    return [asdict(c) for c in conflicts]
