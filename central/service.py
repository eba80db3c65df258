"""``trapedge central``: ingest device messages, store them, propose matches, serve the review UI.

Each payload is checked and stored on the MQTT thread (so a QoS-1 message is acknowledged only
once stored); new sightings are matched on a worker thread. SIGTERM or SIGINT stop it cleanly.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading

from central.compact import compact_kind_of, load_tables, parse_compact
from central.config import CentralConfig, IngestConfig
from central.ingest import DEFAULT_LIMITS, Message, Rejected, Sighting, parse, sighting_of
from central.matching import Matcher, numpy_gallery
from central.store import CentralStore, StoreError
from central.subscriber import Subscriber
from common.logs import setup_logging

log = logging.getLogger("trapedge.central")


class Ingestor:
    """Payload -> rejection row, or message row (+ sighting) once per device and message id.

    Embedding models are bounded: with ``limits.models`` set only those (name@version and
    dimension) are accepted; otherwise a device may send at most ``max_models_per_device`` and all
    devices together ``max_models`` (a model is its name@version and dimension, each its own gallery).
    Compact records (``central/compact.py``) are read for the bundles in ``compact_tables`` (tag -> table).
    """

    def __init__(self, store: CentralStore, prefix: str, on_sighting=None, limits: IngestConfig = DEFAULT_LIMITS,
                 compact_tables: dict | None = None):
        self.store, self.prefix, self.on_sighting, self.limits = store, prefix, on_sighting, limits
        self.compact_tables = compact_tables if compact_tables is not None else load_tables(limits.compact_bundles)
        self.device_spaces = store.device_spaces()  # device -> {(model@version, dim)} it has sent
        self.spaces = set(store.embedding_spaces())

    def __call__(self, topic: str, raw: bytes) -> str:
        """Handle one payload; returns ``"stored"``, ``"duplicate"`` or ``"rejected"``."""
        result = self._checked(topic, raw)
        if isinstance(result, Rejected):
            log.warning("rejected message on %s: %s", topic[:200], result.reason)
            self.store.add_rejected(result)
            return "rejected"
        message, sighting = result
        if not self.store.add_message(message, sighting):
            return "duplicate"
        if sighting is not None:
            self.device_spaces.setdefault(sighting.device, set()).add((sighting.model, sighting.vector.size))
            self.spaces.add((sighting.model, sighting.vector.size))
            if self.on_sighting is not None:
                self.on_sighting(sighting)
        return "stored"

    def _checked(self, topic: str, raw: bytes) -> tuple[Message, Sighting | None] | Rejected:
        """The message and its sighting (under an id of its own), or why it is refused."""
        try:
            if compact_kind_of(topic, self.prefix):
                message = parse_compact(topic, raw, self.prefix, self.compact_tables)
            else:
                message = parse(topic, raw, self.prefix, self.limits)
            if isinstance(message, Rejected):
                return message
            sighting = sighting_of(message) if message.kind == "embedding" else None
        except Exception as exc:  # a check that raised is a bug, but the payload still gets its row
            log.exception("checking a message on %s raised", topic[:200])
            return Rejected(topic, f"payload could not be checked ({type(exc).__name__}: {str(exc)[:200]}); "
                                   "report this as a central bug", raw)
        if sighting is None:
            return message, None
        problem = self._model_problem(sighting)
        if problem:
            return Rejected(topic, problem, raw, message.id)
        return message, self.store.claim_id(sighting)

    def _model_problem(self, sighting: Sighting) -> str | None:
        model, dim, device = sighting.model, sighting.vector.size, sighting.device
        if self.limits.models:
            if model not in self.limits.models:
                return f"embedding model {model} is not in ingest.models; add it there (name@version: dimension)"
            if self.limits.models[model] != dim:
                listed = self.limits.models[model]
                return f"embedding model {model} has {listed} dimensions in ingest.models, this vector {dim}"
            return None
        mine = self.device_spaces.get(device, set())
        if (model, dim) in mine:
            return None
        known = [d for m, d in mine if m == model]
        if known:
            return f"device {device}'s embedding model {model} has {known[0]} dimensions, this vector {dim}"
        if len(mine) >= self.limits.max_models_per_device:
            return (f"device {device} already sent {len(mine)} embedding models (ingest.max_models_per_device); "
                    f"raise it or list the models in ingest.models")
        if (model, dim) not in self.spaces and len(self.spaces) >= self.limits.max_models:
            return (f"{len(self.spaces)} embedding models are stored (ingest.max_models); raise it or list the models "
                    "in ingest.models")
        return None


def gallery_factory(config: CentralConfig):
    """The gallery factory the config asks for; pgvector errors name the DSN with its password masked."""
    if config.gallery.backend == "numpy" or config.gallery.dsn is None:  # the config requires a DSN for pgvector
        return numpy_gallery
    import psycopg

    from central.dsn import mask, one_line
    from central.gallery_pgvector import pgvector_factory

    dsn = config.gallery.dsn.get_secret_value()
    make = pgvector_factory(dsn, config.gallery.table, config.gallery.ef_search)

    def masked(model: str, dim: int):
        try:
            return make(model, dim)
        except psycopg.Error as exc:  # libpq may quote the connection string, password included
            raise RuntimeError(f"pgvector gallery for {model}: {mask(one_line(str(exc)), dsn)}") from None

    return masked


class StartupError(RuntimeError):
    """The service cannot start; the message is one line that says what to do (and holds no secret)."""


def check_gallery(config: CentralConfig) -> None:
    """Raise StartupError (one line, password masked) when the pgvector database cannot be reached."""
    if config.gallery.backend != "pgvector" or config.gallery.dsn is None:
        return
    from central.dsn import connection_problem

    problem = connection_problem(config.gallery.dsn.get_secret_value())
    if problem is not None:
        raise StartupError(f"gallery.dsn: {problem}")


def build_matcher(config: CentralConfig, store: CentralStore) -> Matcher:
    """The matcher with the configured gallery, shortlist, local matching and open-set policy."""
    m = config.matching
    return Matcher(store, m.top_k, m.min_pairs, gallery_factory(config), m.rerank, m.shortlist, m.time_budget_s,
                   m.new_individual_below, m.separate_sides)


class CentralService:
    """Store, matcher, subscriber and (optionally) the review server."""

    def __init__(self, config: CentralConfig):
        self.config = config
        self.stop_requested = threading.Event()
        self._pending: queue.Queue = queue.Queue()

    def start(self) -> None:
        """Check the gallery database, open the store, load the galleries, serve the UI, subscribe."""
        check_gallery(self.config)
        try:
            tables = load_tables(self.config.ingest.compact_bundles)
        except ValueError as exc:  # a compact bundle that cannot be read
            raise StartupError(str(exc)) from None
        try:
            self.store = CentralStore(self.config.store.path)
        except StoreError as exc:
            raise StartupError(str(exc)) from None
        self.matcher = build_matcher(self.config, self.store)
        self.load_galleries()
        self.worker = threading.Thread(target=self._index_loop, name="central-index", daemon=True)
        self.worker.start()
        self.review = self._start_review() if self.config.review.enabled else None
        self.subscriber = Subscriber(self.config.broker, Ingestor(self.store, self.config.broker.prefix,
                                                                   self._pending.put, self.config.ingest, tables))
        self.subscriber.start()

    def load_galleries(self) -> None:
        """Quarantine stored sightings no gallery can take, then build the galleries; neither stops start-up."""
        for sighting_id, reason in self.store.quarantine_unusable(self.config.ingest.max_vector_dim):
            log.warning("quarantined sighting %s: %s (kept, not matched)", sighting_id, reason)
        for problem in self.matcher.build_galleries():
            log.warning("%s", problem)

    def _start_review(self):
        from central.checks import listen_problem
        from central.web import ReviewServer

        review = self.config.review
        try:
            server = ReviewServer(self.store, self.matcher, review.host, review.port, login=review.login,
                                  max_body_bytes=review.max_body_bytes, exports=self.config.exports)
        except ValueError as exc:  # the login's files: unreadable, or not a hash
            raise StartupError(str(exc)) from None
        except OSError as exc:
            raise StartupError(listen_problem(review.host, review.port, exc)) from None
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
