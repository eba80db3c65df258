"""``trapedge central``: ingest device messages, store them, propose matches, serve the review UI.

Each payload is checked and stored on the MQTT thread (so a QoS-1 message is acknowledged only
once stored); new sightings are matched on a worker thread. SIGTERM or SIGINT stop it cleanly.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading

from central.config import CentralConfig
from central.ingest import Rejected, parse, sighting_of
from central.matching import Matcher, numpy_gallery
from central.store import CentralStore
from central.subscriber import Subscriber
from common.logs import setup_logging

log = logging.getLogger("trapedge.central")


class Ingestor:
    """Payload -> rejection row, or message row (+ sighting) once per message id."""

    def __init__(self, store: CentralStore, prefix: str, on_sighting=None):
        self.store, self.prefix, self.on_sighting = store, prefix, on_sighting
        self.dims = store.models()  # model@version -> vector size: one gallery per model needs one size

    def __call__(self, topic: str, raw: bytes) -> str:
        """Handle one payload; returns ``"stored"``, ``"duplicate"`` or ``"rejected"``."""
        result = parse(topic, raw, self.prefix)
        if isinstance(result, Rejected):
            log.warning("rejected message on %s: %s", topic, result.reason)
            self.store.add_rejected(result)
            return "rejected"
        sighting = sighting_of(result) if result.kind == "embedding" else None
        known_dim = self.dims.get(sighting.model) if sighting is not None else None
        if known_dim is not None and known_dim != sighting.vector.size:
            rejected = Rejected(topic, f"embedding model {sighting.model} has {known_dim} dimensions, "
                                       f"this vector {sighting.vector.size}", raw, result.payload.get("id"))
            log.warning("rejected message on %s: %s", topic, rejected.reason)
            self.store.add_rejected(rejected)
            return "rejected"
        if not self.store.add_message(result, sighting):
            return "duplicate"
        if sighting is not None:
            self.dims.setdefault(sighting.model, sighting.vector.size)
        if sighting is not None and self.on_sighting is not None:
            self.on_sighting(sighting)
        return "stored"


def gallery_factory(config: CentralConfig):
    """The gallery factory the config asks for."""
    if config.gallery.backend == "numpy":
        return numpy_gallery
    from central.gallery_pgvector import pgvector_factory

    return pgvector_factory(config.gallery.dsn.get_secret_value(), config.gallery.table, config.gallery.ef_search)


def build_matcher(config: CentralConfig, store: CentralStore) -> Matcher:
    """The matcher with the configured gallery and, if asked, local-feature re-ranking."""
    reranker = None
    if config.matching.rerank:
        from central.rerank import inlier_counts

        reranker = inlier_counts
    return Matcher(store, config.matching.top_k, config.matching.min_pairs, gallery_factory(config),
                   reranker, config.matching.rerank_depth)


class CentralService:
    """Store, matcher, subscriber and (optionally) the review server."""

    def __init__(self, config: CentralConfig):
        self.config = config
        self.stop_requested = threading.Event()
        self._pending: queue.Queue = queue.Queue()

    def start(self) -> None:
        """Open the store, load the galleries, serve the UI, subscribe."""
        self.store = CentralStore(self.config.store.path)
        self.matcher = build_matcher(self.config, self.store)
        for model, dim in self.store.models().items():
            self.matcher.gallery(model, dim)
        self.worker = threading.Thread(target=self._index_loop, name="central-index", daemon=True)
        self.worker.start()
        self.review = self._start_review() if self.config.review.enabled else None
        self.subscriber = Subscriber(self.config.broker, Ingestor(self.store, self.config.broker.prefix,
                                                                   self._pending.put))
        self.subscriber.start()

    def _start_review(self):
        from central.web import ReviewServer

        server = ReviewServer(self.store, self.matcher, self.config.review.host, self.config.review.port,
                              login=self.config.review.login)
        server.start()
        log.info("review UI on http://%s:%d/", self.config.review.host, server.port)
        return server

    def _index_loop(self) -> None:
        """Make each stored sighting searchable; the review page proposes candidates when it asks."""
        while True:
            sighting = self._pending.get()
            if sighting is None:
                return
            try:
                self.matcher.add(sighting)
            except Exception:  # one bad sighting must not stop the next ones being indexed
                log.exception("indexing sighting %s failed", sighting.id)

    def stop(self) -> None:
        """Unsubscribe, finish indexing what arrived, stop the UI, close the store."""
        self.subscriber.stop()
        self._pending.put(None)
        self.worker.join(30)
        if self.review is not None:
            self.review.stop()
        self.store.close()


def main(config: CentralConfig) -> int:
    """Run until SIGTERM or SIGINT."""
    setup_logging(logging.INFO)
    service = CentralService(config)
    service.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: service.stop_requested.set())
    service.stop_requested.wait()
    log.info("stopping")
    service.stop()
    return 0
