"""Matching's own tables beside the central store: cached local features and proposed pairs' evidence.

* ``local_features``: each sighting's RootSIFT features (``central.local_features``), computed once
  (by a background thread when sightings are indexed, else when first needed) and kept on disk
  with the version of the extraction parameters, plus the last ``memory`` of them in memory.
* ``pair_evidence``: the standardised cosine and inliers of every pair shown to the researcher, so
  that verdicts refit the fusion curves on the evidence they were made on.

The tables are created here (``CREATE TABLE IF NOT EXISTS``), not by the store's migrations: they
are caches and records of matching, rebuilt or ignored by older releases without harm.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict

from central import local_features
from central.calibration import PairEvidence
from central.fusion import Evidence
from central.local_features import LocalFeatures
from central.store import CentralStore

log = logging.getLogger("trapedge.central")

VERSION = (f"rootsift-{local_features.LONG_SIDE}-{local_features.MAX_KEYPOINTS}")
SCHEMA = """
CREATE TABLE IF NOT EXISTS local_features (sighting_id TEXT PRIMARY KEY, version TEXT NOT NULL, features BLOB);
CREATE TABLE IF NOT EXISTS pair_evidence (
    anchor_id TEXT NOT NULL, candidate_id TEXT NOT NULL, z REAL NOT NULL, inliers INTEGER,
    PRIMARY KEY (anchor_id, candidate_id)
);
"""


class EvidenceStore:
    """Local features and pair evidence of one central store.

    Args:
        store: the central store (its connection and lock are shared).
        memory: features kept in memory (about 60 kB each: 4,096 take ~250 MB).
    """

    def __init__(self, store: CentralStore, memory: int = 4096):
        self.store, self.memory = store, memory
        self._cache: OrderedDict[str, LocalFeatures | None] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._pending: queue.Queue[str] = queue.Queue()
        self._worker: threading.Thread | None = None
        with store.lock:
            store.conn.executescript(SCHEMA)

    def features(self, sighting_id: str, crop_jpeg: bytes | None = None) -> LocalFeatures | None:
        """The sighting's local features (None when it has no crop), computed and stored the first time.

        ``crop_jpeg`` saves reading the crop from the store when it is at hand.
        """
        with self._cache_lock:
            if sighting_id in self._cache:
                self._cache.move_to_end(sighting_id)
                return self._cache[sighting_id]
        found = self._load(sighting_id, crop_jpeg)
        with self._cache_lock:
            self._cache[sighting_id] = found
            while len(self._cache) > self.memory:
                self._cache.popitem(last=False)
        return found

    def _load(self, sighting_id: str, crop_jpeg: bytes | None) -> LocalFeatures | None:
        with self.store.lock:
            row = self.store.conn.execute("SELECT version, features FROM local_features WHERE sighting_id = ?",
                                          (sighting_id,)).fetchone()
        if row is not None and row[0] == VERSION:
            return None if row[1] is None else LocalFeatures.from_bytes(row[1])
        if crop_jpeg is None:
            sighting = self.store.sighting(sighting_id)
            crop_jpeg = None if sighting is None else sighting.crop_jpeg
        features = None if crop_jpeg is None else local_features.extract(crop_jpeg)
        with self.store.lock:
            self.store.conn.execute(
                "INSERT OR REPLACE INTO local_features (sighting_id, version, features) VALUES (?, ?, ?)",
                (sighting_id, VERSION, None if features is None else features.to_bytes()))
        return features

    def prefetch(self, sighting_id: str) -> None:
        """Compute a new sighting's features on a background thread (off the ingest and index path)."""
        self._pending.put(sighting_id)
        if self._worker is None:
            self._worker = threading.Thread(target=self._prefetch_loop, name="central-features", daemon=True)
            self._worker.start()

    def _prefetch_loop(self) -> None:
        while True:
            sighting_id = self._pending.get()
            try:
                self.features(sighting_id)
            except Exception:  # a crop that breaks extraction must not stop the next ones
                log.exception("local features of sighting %s failed", sighting_id)

    def record(self, anchor_id: str, shown: list[Evidence]) -> None:
        """Remember the evidence of the pairs proposed to the researcher."""
        with self.store.lock:
            self.store.conn.executemany(
                "INSERT OR REPLACE INTO pair_evidence (anchor_id, candidate_id, z, inliers) VALUES (?, ?, ?, ?)",
                [(anchor_id, e.image_id, e.z, e.inliers) for e in shown])

    def verdict_evidence(self) -> list[PairEvidence]:
        """The evidence of every verdict on a proposed pair (links made without a proposal are left out)."""
        with self.store.lock:
            rows = self.store.conn.execute(
                "SELECT e.z, e.inliers, d.verdict FROM decisions d JOIN pair_evidence e "
                "ON e.anchor_id = d.anchor_id AND e.candidate_id = d.candidate_id ORDER BY d.seq").fetchall()
        return [PairEvidence(z, inliers, verdict == "match") for z, inliers, verdict in rows]
