"""Analyses become rows and outbox messages, one transaction per frame.

Keeps the open burst of each source (persisted in the ``events`` table, so a restart carries on
with the same event), raises at most one alert per event and queues alert and embedding messages
in the same transaction as the rows they describe; an event message is queued once, when its
burst closes. Every label here is the box's final label (``Detections.data["label"]``).

Boxes at a place where they recur across events over hours (``edge.events.suppression``) are stored
with the id of their cluster in ``detections.suppressed_by`` and otherwise ignored: they vote for no
event, choose no thumbnail, send no embedding, so a frame whose every box is suppressed opens no event
and raises no alert. The clusters are saved in the frame's transaction.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from common.sqlite import utc_now
from common.wire import MAX_CROP_BYTES, topic
from edge.analysis.analyzer import FrameAnalysis, FrameFailure
from edge.analysis.config import PrivacyConfig
from edge.analysis.labels import LabelSpace
from edge.capture.frame import camera_time
from edge.capture.video import clip_of
from edge.events.bursts import BurstConfig, BurstState, Event, add_frame, aggregate_burst, event_id, joins, voters
from edge.events.rules import RulesConfig, alert_reason, decide_alert
from edge.events.suppression import Cluster, SuppressionConfig, candidates, observe
from edge.runtime.detections import Detections
from edge.storage.store import Store
from edge.wire.messages import AlertMessage, Box, EmbeddingMessage, EventMessage, Message, Picture, iso, stable_id
from edge.wire.thumbnails import thumbnail_jpeg


class AlertConfig(BaseModel):
    """Pictures that leave the device: alert thumbnails and, optionally, each embedding's crop."""

    model_config = ConfigDict(extra="forbid")
    thumbnail_max_side: int = Field(320, ge=32, title="Longer side of the alert thumbnail, pixels")
    thumbnail_max_bytes: int = Field(40_000, ge=2_000, title="Largest alert thumbnail, bytes")
    embedding_crop_max_side: int | None = Field(
        None, ge=32, le=1024, title="Attach each embedding's crop as a JPEG of this longer side (central re-ranks and "
                                    "shows them); unset: vectors only, the smallest messages")


@dataclass(frozen=True)
class Identity:
    """Who is publishing: the device, its site, the topic prefix and the embedder's name and version."""

    device_id: str
    site: str | None
    prefix: str
    embedder_model: str
    bundle_version: str


@dataclass
class _OpenBurst:
    state: BurstState
    alerted: bool
    thumbnail: Picture | None
    thumbnail_score: float
    updated: datetime = field(default_factory=lambda: datetime.now(timezone.utc))


@dataclass(frozen=True)
class Recorded:
    """What recording one frame did."""

    frame_id: int | None
    event_id: str | None
    alert: str | None
    messages: int
    suppressed: int = 0  # boxes stored as repeated static false positives


def _picture(thumb: bytes | None) -> Picture | None:
    if not thumb:
        return None
    width, height = Image.open(io.BytesIO(thumb)).size
    return Picture(thumb, width, height)


class Recorder:
    """Writes frames, detections, embeddings and events; queues their messages.

    Args:
        labels: the analyzer's ``LabelSpace`` (events roll up by its taxonomy, as boxes do), or just
            the names of the ``label_probs`` columns (``Analyzer.labels``).
        suppression: when boxes that recur at one place stop counting (None: never).
    """

    def __init__(self, store: Store, identity: Identity, bursts: BurstConfig, rules: RulesConfig,
                 alerts: AlertConfig, privacy: PrivacyConfig, labels: list[str] | LabelSpace,
                 suppression: SuppressionConfig | None = None):
        self.store, self.identity, self.bursts, self.rules = store, identity, bursts, rules
        self.space = labels if isinstance(labels, LabelSpace) else None
        self.alerts, self.privacy = alerts, privacy
        self.suppression = suppression or SuppressionConfig(enabled=False)
        self.labels = list(labels.labels) if isinstance(labels, LabelSpace) else list(labels)
        self.open: dict[str, _OpenBurst] = self._load_open()
        self.clusters: dict[str, list[Cluster]] = self._load_clusters()

    def resync(self) -> None:
        """Forget the bursts and clusters in memory and read them back from the database: after a write
        that failed (and was rolled back), memory and database agree again."""
        self.open = self._load_open()
        self.clusters = self._load_clusters()

    # --- bursts -------------------------------------------------------------------------------
    def _load_open(self) -> dict[str, _OpenBurst]:
        rows = self.store.conn.execute(
            "SELECT id, source_id, start, end, frames, crops, probs_sum, counts, alerted, thumbnail, "
            "thumbnail_score, updated_at FROM events WHERE closed = 0").fetchall()
        result = {}
        for eid, source, start, end, frames, crops, sums, counts, alerted, thumb, score, updated in rows:
            state = BurstState(eid, source, camera_time(datetime.fromisoformat(start)),
                               camera_time(datetime.fromisoformat(end)), frames, crops, json.loads(sums),
                               json.loads(counts))
            result[source] = _OpenBurst(state, bool(alerted), _picture(thumb), score,
                                        camera_time(datetime.fromisoformat(updated)))
        return result

    # --- repeated static false positives ------------------------------------------------------
    def _load_clusters(self) -> dict[str, list[Cluster]]:
        clusters: dict[str, list[Cluster]] = {}
        for cluster in self.store.clusters():
            clusters.setdefault(cluster.source_id, []).append(cluster)
        return clusters

    def _suppress(self, analysis: FrameAnalysis) -> np.ndarray:
        """Per box, the id of the suppressed cluster it belongs to, else None (the clusters updated and
        saved in the frame's transaction; a release by ``trapedge suppress release`` read back first)."""
        det, source = analysis.detections, analysis.frame.source_id
        if not self.suppression.enabled or not len(det):
            return np.full(len(det), None, dtype=object)
        if self.store.changed_elsewhere():
            self.clusters = self._load_clusters()
        h, w = analysis.rgb.shape[:2]
        seen = observe(self.clusters.get(source, []), source, det.xyxy / np.array([w, h, w, h], np.float32),
                       candidates(det), analysis.frame.time, analysis.night, self.bursts.gap_seconds,
                       self.suppression)
        self.clusters[source] = list(seen.clusters)
        self.store.save_clusters(seen.changed, seen.removed)
        return np.array(seen.suppressed_by, dtype=object)

    def suppression_status(self, limit: int = 20) -> dict:
        """``suppressed_clusters`` (how many) and ``suppressions``, the ``limit`` seen in most events
        (id, source, box, events, since), for the status message."""
        with self.store.lock:
            if self.store.changed_elsewhere():
                self.clusters = self._load_clusters()
            suppressed = sorted((c for group in self.clusters.values() for c in group if c.suppressed),
                                key=lambda c: (-c.events, c.id))
        return {"suppressed_clusters": len(suppressed),
                "suppressions": [{"id": c.id, "source": c.source_id, "box": [round(v, 4) for v in c.box],
                                  "events": c.events, "since": iso(c.since or c.last_seen)}
                                 for c in suppressed[:limit]]}

    def _queue(self, message: Message) -> None:
        self.store.outbox.add(topic(self.identity.prefix, self.identity.device_id, message.kind), message)

    def _close(self, source_id: str) -> int:
        burst = self.open.pop(source_id)
        event = aggregate_burst(burst.state, self.bursts, closed=True, space=self.space)
        self._save_event(event, burst)
        self._queue(EventMessage(device=self.identity.device_id, site=self.identity.site, event=event,
                                 alerted=burst.alerted, id=stable_id(self.identity.device_id, "event", event.id),
                                 alert_reason=alert_reason(event, self.rules, self.identity.site, burst.alerted)))
        return 1

    def close_idle(self, idle_seconds: float | None = None) -> int:
        """Close bursts that have seen no frame for the burst gap (wall clock); returns messages queued."""
        idle = self.bursts.gap_seconds if idle_seconds is None else idle_seconds
        now = datetime.now(timezone.utc)
        idle_sources = [s for s, burst in self.open.items() if (now - burst.updated).total_seconds() >= idle]
        if not idle_sources:
            return 0
        with self.store.transaction():
            return sum(self._close(source_id) for source_id in idle_sources)

    def _save_event(self, event: Event, burst: _OpenBurst) -> None:
        s = burst.state
        self.store.conn.execute(
            "INSERT INTO events (id, source_id, start, end, frames, label, score, probs, counts, crops, probs_sum, "
            "thumbnail, thumbnail_score, closed, alerted, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
            "ON CONFLICT (id) DO UPDATE SET end=excluded.end, start=excluded.start, frames=excluded.frames, "
            "label=excluded.label, score=excluded.score, probs=excluded.probs, counts=excluded.counts, "
            "crops=excluded.crops, probs_sum=excluded.probs_sum, thumbnail=excluded.thumbnail, "
            "thumbnail_score=excluded.thumbnail_score, closed=excluded.closed, alerted=excluded.alerted, "
            "updated_at=excluded.updated_at",
            (event.id, event.source_id, s.start.isoformat(), s.end.isoformat(), event.frames, event.label,
             event.score, json.dumps(event.probs), json.dumps(event.counts), s.crops, json.dumps(s.probs_sum),
             burst.thumbnail.jpeg if burst.thumbnail else None, burst.thumbnail_score, int(event.closed),
             int(burst.alerted), utc_now()),
        )

    # --- frames -------------------------------------------------------------------------------
    def record_failure(self, failure: FrameFailure) -> Recorded:
        """A frame without an analysis: a failure row with the reason, nothing else."""
        frame = failure.frame
        with self.store.transaction() as conn:
            conn.execute("INSERT OR IGNORE INTO failures (source_id, key, path, reason, at) VALUES (?,?,?,?,?)",
                         (frame.source_id, frame.key, str(frame.path or ""), failure.reason, utc_now()))
            self.store.end_attempt(frame.source_id, frame.key)
        return Recorded(None, None, None, 0)

    def record(self, analysis: FrameAnalysis) -> Recorded:
        """Store one analysed frame and queue what it causes, atomically."""
        before = len(self.store.outbox)
        with self.store.transaction():
            suppressed_by = self._suppress(analysis)
            kept = np.array([cid is None for cid in suppressed_by], bool)
            burst = self._assign(analysis, kept)
            frame_id = self._insert_frame(analysis, burst.state.id if burst else None)
            self.store.end_attempt(analysis.frame.source_id, analysis.frame.key)
            detection_ids = self._insert_detections(frame_id, analysis, suppressed_by)
            alert = None
            if burst is not None:
                self._update_thumbnail(burst, analysis, kept)
                alert = self._maybe_alert(burst, analysis.frame.name[:1024] or None)
                self._save_event(aggregate_burst(burst.state, self.bursts, space=self.space), burst)
                self._insert_embeddings(analysis, detection_ids, burst.state.id, kept)
        return Recorded(frame_id, burst.state.id if burst else None, alert, len(self.store.outbox) - before,
                        int((~kept).sum()))

    def _assign(self, analysis: FrameAnalysis, kept: np.ndarray) -> _OpenBurst | None:
        frame = analysis.frame
        clip = clip_of(frame)  # a video clip is one event of all its frames, keyed by the clip, even if empty
        eid = event_id(self.identity.device_id, frame.source_id, clip or frame.key)
        burst = self.open.get(frame.source_id)
        if burst is not None and not joins(burst.state, frame.time, self.bursts, eid if clip else None):
            self._close(frame.source_id)
            burst = None
        votes = voters(analysis.detections[kept], self.bursts)
        if burst is None:
            if not len(votes) and clip is None:
                return None
            state = BurstState(eid, frame.source_id, frame.time, frame.time, clip=clip is not None)
            burst = self.open[frame.source_id] = _OpenBurst(state, False, None, 0.0)
        burst.state = add_frame(burst.state, frame.time, votes, self.labels)
        burst.updated = datetime.now(timezone.utc)
        return burst

    def _blurred(self, det: Detections, index: int) -> bool:
        """Blur a box of a blur label, and any box that is not confidently an animal (it may be a person)."""
        unsure = "confident_animal" in det.data and not bool(det.data["confident_animal"][index])
        return unsure or det.labels()[index] in set(self.privacy.blur_labels)

    def _update_thumbnail(self, burst: _OpenBurst, analysis: FrameAnalysis, kept: np.ndarray) -> None:
        det = analysis.detections
        scores = np.where(kept, det.confidence, -1.0)
        if not kept.any() or float(scores.max()) <= burst.thumbnail_score:
            return
        best = int(scores.argmax())
        jpeg, (width, height) = thumbnail_jpeg(analysis.rgb, det.xyxy[best], self.alerts.thumbnail_max_side,
                                               self.alerts.thumbnail_max_bytes, self._blurred(det, best))
        burst.thumbnail, burst.thumbnail_score = Picture(jpeg, width, height), float(det.confidence[best])

    def _maybe_alert(self, burst: _OpenBurst, file: str | None = None) -> str | None:
        event = aggregate_burst(burst.state, self.bursts, space=self.space)
        decision = decide_alert(event, self.rules, self.identity.site, burst.alerted)
        if decision is None:
            return None
        burst.alerted = True
        self._queue(AlertMessage(device=self.identity.device_id, site=self.identity.site, event=event,
                                 thumbnail=burst.thumbnail, id=stable_id(self.identity.device_id, "alert", event.id),
                                 file=file))
        return decision.label

    def _insert_frame(self, analysis: FrameAnalysis, event: str | None) -> int:
        f = analysis.frame
        h, w = analysis.rgb.shape[:2]
        cursor = self.store.conn.execute(
            "INSERT INTO frames (source_id, key, time, time_source, path, width, height, night, brightness, motion, "
            "gated, flags, event_id, processed_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (f.source_id, f.key, f.time.isoformat(), f.time_source, str(f.path or ""), w, h, int(analysis.night),
             analysis.brightness, analysis.motion, int(analysis.gated), ",".join(f.flags), event, utc_now()),
        )
        return int(cursor.lastrowid or 0)

    def _insert_detections(self, frame_id: int, analysis: FrameAnalysis, suppressed_by: np.ndarray) -> list[int]:
        det = analysis.detections
        probs = det.data.get("species_probs")
        ids = []
        for i, label in enumerate(det.labels()):
            cursor = self.store.conn.execute(
                "INSERT INTO detections (frame_id, idx, x1, y1, x2, y2, confidence, class_id, label, label_score, "
                "label_source, probs, suppressed_by) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (frame_id, i, *map(float, det.xyxy[i]), float(det.confidence[i]), int(det.class_id[i]), label,
                 float(det.data["label_score"][i]), str(det.data["label_source"][i]),
                 json.dumps(np.round(probs[i], 4).tolist()) if probs is not None else None, suppressed_by[i]),
            )
            ids.append(int(cursor.lastrowid or 0))
        return ids

    def _insert_embeddings(self, analysis: FrameAnalysis, detection_ids: list[int], event: str,
                           kept: np.ndarray) -> None:
        det, frame = analysis.detections, analysis.frame
        boxes, labels = det.normalised_xywh(analysis.rgb.shape[:2]), det.labels()
        for i in np.flatnonzero(det.data["embedded"] & kept):
            vector = det.data["embedding"][i]
            self.store.conn.execute(
                "INSERT INTO embeddings (detection_id, event_id, model, model_version, dim, vector) VALUES (?,?,?,?,?,?)",
                (detection_ids[i], event, self.identity.embedder_model, self.identity.bundle_version, len(vector),
                 vector.astype(np.float32).tobytes()),
            )
            x, y, w, h = boxes[i]
            box = Box((x, y, w, h), float(det.confidence[i]), labels[i], float(det.data["label_score"][i]),
                      det.data["label_source"][i])
            self._queue(EmbeddingMessage(
                id=stable_id(self.identity.device_id, "embedding", frame.source_id, frame.key, int(i),
                             self.identity.bundle_version),
                device=self.identity.device_id, event_id=event, source_id=frame.source_id, frame_time=frame.time,
                box=box, vector=vector, model=self.identity.embedder_model, model_version=self.identity.bundle_version,
                crop=self._embedding_crop(analysis, int(i))))

    def _embedding_crop(self, analysis: FrameAnalysis, index: int) -> Picture | None:
        """One embedding's crop as a JPEG (None unless ``alerts.embedding_crop_max_side`` is set)."""
        side = self.alerts.embedding_crop_max_side
        if side is None:
            return None
        det = analysis.detections
        jpeg, (width, height) = thumbnail_jpeg(analysis.rgb, det.xyxy[index], side, MAX_CROP_BYTES,
                                               self._blurred(det, index))
        return Picture(jpeg, width, height)
