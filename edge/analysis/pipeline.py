"""Frames through the analyzer with up to ``bundle.frames_at_once`` in flight, results in frame order.

Each frame's motion gate runs in the caller's thread, in order (it compares a frame with the one
before it); the models then run on a worker thread, several frames at once. Results come back in
the order the frames went in, so bursts, events and the store see exactly what one frame at a time
gives. With one frame at a time there is no worker thread: a frame is analysed when it is put.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from edge.analysis.analyzer import Analyzer, FrameAnalysis, FrameFailure
from edge.capture.frame import Frame

Result = FrameAnalysis | FrameFailure


class Pipeline:
    """An analyzer's frames in flight (``put``, then ``take`` when ``full``, or ``results``)."""

    def __init__(self, analyzer: Analyzer, frames_at_once: int | None = None):
        self.analyzer = analyzer
        self.depth = max(1, analyzer.frames_at_once if frames_at_once is None else frames_at_once)
        self._pool = ThreadPoolExecutor(self.depth, thread_name_prefix="analysis") if self.depth > 1 else None
        self._pending: deque[tuple[Frame, Future[Result]]] = deque()

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """As many frames in flight as may be: ``take`` one before the next ``put``."""
        return len(self._pending) >= self.depth

    def put(self, frame: Frame, result: Result | None = None, alone: bool = False) -> None:
        """Start ``frame`` (its gate now, its models on a worker), or queue a ``result`` decided without
        the models (a frame skipped), in its place in the order. ``alone``: wait for the frames in flight,
        then analyse this one in the caller's thread with nothing beside it (a frame that was in flight
        when the service died, so that only the frame that kills it is blamed)."""
        if result is None and alone:
            for _, running in self._pending:
                running.exception()  # waits; a frame's error is in its result, never raised here
            result = self.analyzer.process(frame)
        elif result is None:
            begun = self.analyzer.begin(frame)
            if isinstance(begun, FrameFailure):
                result = begun
            elif self._pool is None:
                result = self.analyzer.finish(begun)
            else:
                self._pending.append((frame, self._pool.submit(self.analyzer.finish, begun)))
                return
        done: Future[Result] = Future()
        done.set_result(result)
        self._pending.append((frame, done))

    def take(self) -> tuple[Frame, Result]:
        """The oldest frame in flight and its result (waits for it)."""
        frame, future = self._pending.popleft()
        return frame, future.result()

    def abandon(self) -> list[Frame]:
        """The frames in flight, their results dropped (to be offered again later), oldest first."""
        for _, future in self._pending:
            future.cancel()  # one not started yet never runs; one running finishes unseen
        frames = [frame for frame, _ in self._pending]
        self._pending.clear()
        return frames

    def results(self, frames: Iterable[Frame]) -> Iterator[tuple[Frame, Result]]:
        """Every frame with its result, in order, ``depth`` frames in flight."""
        for frame in frames:
            self.put(frame)
            while self.full:
                yield self.take()
        while self._pending:
            yield self.take()

    def close(self) -> None:
        """Drop what is in flight and stop the worker threads (after the frames they are on)."""
        self.abandon()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
