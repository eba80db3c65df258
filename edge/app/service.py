"""``trapedge run``: the appliance's main loop under systemd.

Start-up is a short list of named steps; each frame goes capture → analyse → record → publish.
SIGTERM stops it cleanly; READY and WATCHDOG go to systemd when it runs under it.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import sqlite3
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.logs import setup_logging
from edge.analysis.analyzer import Analyzer, FrameAnalysis, FrameFailure
from edge.analysis.pipeline import Pipeline
from edge.app import systemd
from edge.app.bundle_install import BundleRoot, InstallError, self_rollback, smoke_check, smoke_images, store_frames
from edge.app.checks import label_problems
from edge.app.config import EdgeConfig
from edge.app.factory import build_analyzer, build_recorder
from edge.app.health import THERMAL_ROOT, DiskGuard, temperature_c
from edge.app.memory import one_malloc_arena, release_start_up_memory
from edge.capture.frame import Frame
from edge.capture.sources import create_source
from edge.capture.sources.base import FrameSource, WakingSource
from edge.publish.mqtt import Publisher
from edge.runtime.bundle import Bundle, BundleError, BundleTrust, load_bundle
from edge.storage.recorder import Recorder
from edge.storage.store import Store, StoreError, is_full
from edge.wire.compact import CompactCodec

log = logging.getLogger("trapedge")


@dataclass
class Counters:
    """What the service did since it started (for status messages and the demo)."""

    frames: int = 0
    failures: int = 0
    gated: int = 0
    detections: int = 0
    alerts: int = 0
    started: float = field(default_factory=time.monotonic)
    last_error: str | None = None


class StopEvent(threading.Event):
    """The stop request: a ``threading.Event`` that ``select`` can wait on too (its ``fileno`` turns
    readable once it is set), so the idle loop sleeps on the sources' descriptors and still stops at
    once. Set once, never cleared."""

    def __init__(self) -> None:
        super().__init__()
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)

    def fileno(self) -> int:
        return self._read

    def set(self) -> None:
        super().set()
        if self._write >= 0:
            try:
                os.write(self._write, b"\0")
            except BlockingIOError:  # the pipe is full, so readable already
                pass

    def close(self) -> None:
        """Close the pipe (``is_set`` and ``wait`` still work)."""
        if self._write >= 0:
            os.close(self._read)
            os.close(self._write)
            self._read = self._write = -1


MAX_ATTEMPTS = 2  # analyses of one frame that may end with the service (the third is a failure record)


class StartError(RuntimeError):
    """The service cannot start because of its settings; one line that says what to do."""


class Service:
    """One appliance: sources, models, store, publisher."""

    bundle: Bundle  # set by start(), as are the analyzer, recorder, store and sources

    def __init__(self, config: EdgeConfig):
        self.config = config
        self.stop_requested = StopEvent()
        self.counters = Counters()
        self.publisher: Publisher | None = None
        self.bundle_rollback: dict | None = None
        self.file_time_sources: set[str] = set()  # sources already warned that frames carry no EXIF time
        self.thermal_root = THERMAL_ROOT

    # --- start-up -----------------------------------------------------------------------------
    def start(self) -> None:
        """Open the store, load the models, open the sources, connect the broker."""
        self.store = Store(self.config.store.path)
        self.disk = DiskGuard(self.config.store.path, self.config.disk)
        self.disk.check()
        if self.config.bundle.allow_unsigned:
            log.warning("bundle.allow_unsigned is true: this device loads UNSIGNED model bundles (development only; "
                        "set it false and list your signing key in bundle.trusted_keys on a deployed camera)")
        self._load_models()
        for problem in label_problems(self.config, f"{self.bundle.manifest.name} {self.bundle.manifest.version}",
                                      self.analyzer.labels):
            log.warning("%s", problem)
        self.recorder: Recorder = build_recorder(self.config, self.store, self.analyzer, self.bundle)
        self.sources = [create_source(cfg, self.store.is_done) for cfg in self.config.sources]
        self.publisher = self._build_publisher()
        log.info("trapedge %s: bundle %s, %d frame(s) at once, %d source(s), broker %s", self.config.device_id,
                 self.bundle.manifest.version, self.pipeline.depth, len(self.sources),
                 "on" if self.publisher else "off (outbox only)")
        # pages only start-up needed: ~23 MB less peak RSS with two frames at once (edge/app/memory.py)
        log.debug("start-up's library pages handed back: %.1f MB", release_start_up_memory() / 2**20)

    def _load_models(self) -> None:
        """Load the bundle and build the models; if that fails and ``bundle.path`` is a
        ``current`` link with a ``previous`` one that loads, switch back to it and go on."""
        path = self.config.bundle.path
        try:
            self._try_bundle(path)
            return
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            previous = self._previous_that_fails_too(path)
            if previous is not None:  # the settings, not the new bundle: going back would only lose it
                raise StartError(f"bundle {path} failed ({reason.splitlines()[0][:300]}) and so does the previous one, "
                                 f"{previous}, with these settings: check edge.yaml (nothing rolled back)") from exc
            rolled = self._roll_back(path, reason, self.config.bundle.trust)
            if rolled is None:
                raise
        log.error("bundle %s failed (%s): rolled back to %s", rolled[0], reason, rolled[1])
        self.bundle_rollback = {"bad": rolled[0], "now": rolled[1], "reason": reason[:300]}
        self._try_bundle(path)

    def _previous_that_fails_too(self, path: Path) -> str | None:
        """The previous bundle's name when ``path`` is a ``current`` link whose ``previous`` one fails as well with
        this config (a setting such as an info-bar trim larger than the frame fails every bundle's smoke check: it
        must not cost the newly installed one); None when there is none, or it works (then roll back to it)."""
        root = BundleRoot(Path(path).parent)
        if Path(path).name != "current" or not root.previous.is_symlink():
            return None
        good = root.target(root.previous)
        if good is None or good == root.target(root.current):
            return None
        try:
            self._try_bundle(good)
        except Exception:
            return good.name
        return None

    @staticmethod
    def _roll_back(path: Path, reason: str, trust: BundleTrust) -> tuple[str, str] | None:
        try:
            return self_rollback(path, trust)
        except (BundleError, OSError) as exc:
            log.error("bundle at %s failed (%s); cannot roll back to previous: %s", path, reason, exc)
            return None

    def _try_bundle(self, path: Path) -> None:
        """Load the bundle (its signature checked against ``bundle.trusted_keys``), build the analyzer
        and smoke-check it on one frame (a recorded one, else a gray one), as ``trapedge bundle install`` does."""
        self.bundle = load_bundle(path, self.config.bundle.trust)
        if self.bundle.warning:
            log.warning("%s", self.bundle.warning)
        self.analyzer: Analyzer = build_analyzer(self.config, self.bundle)
        if hasattr(self, "pipeline"):
            self.pipeline.close()
        self.pipeline: Pipeline = Pipeline(self.analyzer)
        images = smoke_images(store_frames(self.config.store.path), count=1)
        h, w = self.analyzer.detector.spec.input.size
        smoke_check(self.analyzer, images or [np.full((h, w, 3), 114, np.uint8)])

    def _build_publisher(self) -> Publisher | None:
        mqtt = self.config.mqtt
        if mqtt is None or not mqtt.enabled:
            return None
        try:
            compact = CompactCodec.of(self.bundle, self.config.device_id) if mqtt.encoding.compact_kinds() else None
        except (BundleError, ValueError, OSError) as exc:
            raise StartError(f"mqtt.encoding asks for compact messages: {exc}") from None
        try:
            publisher = Publisher(mqtt, self.config.device_id, self.store.outbox, self.health, compact)
            publisher.start()
        except (ValueError, OSError, ssl.SSLError) as exc:  # the password or TLS files: unreadable, not PEM
            raise StartError(f"mqtt: {exc}: fix the file (readable by the service user) or the mqtt settings") from None
        return publisher

    # --- the loop -----------------------------------------------------------------------------
    def health(self) -> dict:
        """Figures for status messages."""
        c = self.counters
        return {"uptime_s": round(time.monotonic() - c.started, 1), "frames": c.frames, "failures": c.failures,
                "gated": c.gated, "detections": c.detections, "alerts": c.alerts,
                "queue_depth": len(self.store.outbox), "bundle_version": self.bundle.manifest.version,
                "last_error": c.last_error, **self.disk.figures(), "temperature_c": temperature_c(self.thermal_root),
                "bundle_rollback": self.bundle_rollback, **self.recorder.suppression_status()}

    def process(self, frame: Frame) -> None:
        """One frame, start to finish: its analysis (or failure) recorded and its messages sent."""
        self._begin(frame)
        self._record(*self.pipeline.take())

    def _begin(self, frame: Frame) -> None:
        """Put one frame into the pipeline. A frame whose analysis never finished ``MAX_ATTEMPTS`` times
        (the service died on it: out of memory) goes in as a failure instead of being tried again at every
        restart; one that was in flight when the service died is analysed alone, so that a frame in flight
        beside the one that kills the service is not blamed for it."""
        if frame.ok and frame.time_source == "mtime" and frame.source_id not in self.file_time_sources:
            self.file_time_sources.add(frame.source_id)
            log.warning("%s: %s has no EXIF capture time: its file time is used (said once per source); bursts "
                        "follow capture times, so keep file times when copying (cp -p, rsync -t) or they may merge",
                        frame.source_id, frame.name)
        attempt = self.store.begin_attempt(frame.source_id, frame.key)
        if attempt > MAX_ATTEMPTS:
            self.pipeline.put(frame, FrameFailure(
                frame, f"its analysis stopped the service {attempt - 1} times (out of memory?): skipped"))
        else:
            self.pipeline.put(frame, alone=attempt > 1)

    def _record(self, frame: Frame, result: FrameAnalysis | FrameFailure) -> None:
        """A frame's analysis (or failure) recorded and its messages sent."""
        if isinstance(result, FrameFailure):
            self.recorder.record_failure(result)
            self.counters.failures += 1
            if frame.ok:  # a model raised on a decoded frame: an error, not a bad file
                self.counters.last_error = result.reason
            log.warning("frame %s/%s failed: %s", frame.source_id, frame.key, result.reason)
            return
        recorded = self.recorder.record(result)
        self.counters.frames += 1
        self.counters.gated += int(result.gated)
        self.counters.detections += len(result.detections)
        if recorded.alert:
            self.counters.alerts += 1
            log.info("ALERT %s in event %s (%s)", recorded.alert, recorded.event_id, frame.key)
        if recorded.messages and self.publisher:
            self.publisher.kick()

    def poll_once(self) -> int:
        """Process every frame the sources have now, ``bundle.frames_at_once`` in flight; returns how many.
        Takes none while the store's disk is full (the sources keep them for later)."""
        if self.disk.check() and self.publisher:
            self.publisher.publish_status()
        if not self.disk.accepting:
            return 0
        count = 0
        for source in self.sources:
            for frame in source.poll():
                if self.stop_requested.is_set() or not self.disk.accepting:
                    source.retry_later(frame.key)  # taken but not recorded: offered again later (a file)
                    break  # the source offers the rest of its batch again too
                count += 1
                self._guarded(source, frame)
                while self.pipeline.full:
                    self._guarded(source, *self.pipeline.take())
            while len(self.pipeline):
                if self.stop_requested.is_set() or not self.disk.accepting:
                    for frame in self.pipeline.abandon():  # analysed, never recorded: offered again later
                        self._offer_again(source, frame)
                    break
                self._guarded(source, *self.pipeline.take())
            if self.stop_requested.is_set():
                break
        return count

    def _guarded(self, source: FrameSource, frame: Frame, result: FrameAnalysis | FrameFailure | None = None) -> None:
        """Put one frame into the pipeline (no ``result`` yet) or record its ``result``. A full disk gives the
        frame back to its source; any other error is logged, never the end of the appliance."""
        try:
            if result is None:
                self._begin(frame)
            else:
                self._record(frame, result)
        except (sqlite3.Error, OSError) as exc:
            if not self._storage_failed(f"recording {frame.source_id}/{frame.key}", exc):
                raise
            self._offer_again(source, frame)  # the disk failed, not the analysis
        except Exception as exc:  # one bad frame must not stop the appliance
            self.counters.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("processing %s/%s failed", frame.source_id, frame.key)

    def _offer_again(self, source: FrameSource, frame: Frame) -> None:
        """A frame taken but not recorded: its attempt undone, offered again later."""
        self.store.undo_attempt(frame.source_id, frame.key)
        source.retry_later(frame.key)

    def _storage_failed(self, what: str, exc: BaseException) -> bool:
        """A database write that failed: for want of space, the disk is full (frames wait, the outbox
        keeps draining) and memory is read back from the database; True when handled so."""
        if not is_full(exc):
            return False
        self.disk.write_failed(f"{what}: {exc}")
        self.counters.last_error = f"disk full: {exc}"
        self.recorder.resync()
        if self.publisher:
            self.publisher.publish_status()
        return True

    def _housekeeping(self, what: str, step: Callable[[], object]) -> object:
        """A periodic write (closing bursts, retention, status): a full disk or a database error is
        logged and tried again next time, never the end of the service."""
        try:
            return step()
        except (sqlite3.Error, OSError) as exc:
            if not self._storage_failed(what, exc):
                self.counters.last_error = f"{what}: {type(exc).__name__}: {exc}"
                log.error("%s failed: %s: %s (tried again later)", what, type(exc).__name__, exc)
                self.recorder.resync()
            return None

    def run(self, once: bool = False) -> None:
        """Loop until SIGTERM (or, with ``once``, until the sources are drained and bursts closed)."""
        watchdog = systemd.Watchdog()
        systemd.ready()
        next_retention = next_status = time.monotonic()
        settle = max((getattr(cfg, "settle_seconds", 0.0) for cfg in self.config.sources), default=0.0)
        once_until = time.monotonic() + 2 * settle + 10  # files arriving now settle and are taken; then stop
        while not self.stop_requested.is_set():
            self.store.check_file()
            handled = self.poll_once()
            watchdog.tick()
            if once and handled == 0 and self.settling() and time.monotonic() < once_until:
                self.wait_for_frames(self.config.idle_sleep_s)
                continue
            if once and handled == 0:
                self._housekeeping("closing bursts", lambda: self.recorder.close_idle(idle_seconds=0))
                break
            if self._housekeeping("closing bursts", self.recorder.close_idle) and self.publisher:
                self.publisher.kick()
            now = time.monotonic()
            if now >= next_retention:
                self._housekeeping("retention", lambda: self.store.apply_retention(self.config.store))
                next_retention = now + self.config.retention_interval_s
            if now >= next_status and self.publisher:
                self._housekeeping("status", self.publisher.publish_status)
                next_status = now + self.config.status_interval_s
            if handled == 0:
                self.wait_for_frames(self.config.idle_sleep_s)

    def wait_for_frames(self, timeout: float) -> None:
        """Sleep up to ``timeout`` seconds, waking at once when a stop is requested or a source says it
        may have frames (a file closed in a watched folder); sources that cannot say are polled when
        it ends. While the disk is full the sources are not polled, so their notifications would
        stay unread: then it just sleeps."""
        fds = [fd for source in getattr(self, "sources", []) if isinstance(source, WakingSource)
               and (fd := source.wake_fd()) is not None] if self.disk.accepting else []
        if fds:
            select.select([self.stop_requested.fileno(), *fds], [], [], timeout)
        else:
            self.stop_requested.wait(timeout)

    def settling(self) -> int:
        """Files the sources have seen that are still settling (not yet taken)."""
        return sum(getattr(source, "settling", lambda: 0)() for source in getattr(self, "sources", []))

    def summary(self) -> str:
        """One line: what this run did (``run --once`` prints it)."""
        c = self.counters
        events = self.store.conn.execute("SELECT COUNT(*) FROM events WHERE closed = 1").fetchone()[0]
        waiting = self.settling()
        return (f"{c.frames + c.failures} frames ({c.failures} failed, {c.gated} gated out), {c.detections} detections, "
                f"{events} events in the store, {c.alerts} alerts, {len(self.store.outbox)} messages waiting to be sent"
                + (f"; {waiting} files still settling (being written?): run again once they are complete"
                   if waiting else ""))

    def stop(self, drain_seconds: float = 5.0) -> None:
        """Close sources, flush the outbox if connected, close the store."""
        systemd.stopping()
        for source in getattr(self, "sources", []):
            source.close()
        if hasattr(self, "pipeline"):
            self.pipeline.close()
        if self.publisher:
            self.publisher.stop(timeout=drain_seconds)
        if hasattr(self, "store"):
            self.store.close()
        self.stop_requested.close()


def install_signal_handlers(service: Service) -> None:
    """SIGTERM and SIGINT request a clean stop."""
    def handler(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        service.stop_requested.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(config: EdgeConfig, once: bool = False) -> int:
    """Start, run, stop. A database that cannot be used (read-only, deleted while running) ends it
    with one line saying why and exit status 1 (systemd starts it again); a bundle that cannot be
    loaded, with none to roll back to, with one line and exit status 2."""
    setup_logging(config.log_level)
    one_malloc_arena()
    service = Service(config)
    install_signal_handlers(service)
    try:
        service.start()
        service.run(once=once)
        if once:
            print(f"trapedge run --once: {service.summary()}")
    except StoreError as exc:
        log.error("%s", exc)
        return 1
    except (BundleError, InstallError) as exc:  # missing, unsigned, tampered or failing its smoke check, and
        log.error("bundle.path: %s", exc)      # no previous bundle to go back to
        return 2
    except StartError as exc:
        log.error("%s", exc)
        return 2
    finally:
        service.stop()
    return 0

