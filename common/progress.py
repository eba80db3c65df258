"""Progress of long work (detect, embed, evaluate, export, training): count, rate and ETA.

On a terminal it is a tqdm bar. Anywhere else (piped, under systemd, in CI, in a notebook's log)
a bar shows nothing, so it is plain lines on stderr at a bounded rate: the first after
``FIRST_AFTER`` seconds, then each time another ``EVERY_FRACTION`` of the total is done or
``EVERY_SECONDS`` have passed, whichever comes first, and one summary line at the end::

    detect: 120/725 images (17%), 26.1 images/s, ETA 0:23
    detect: 725/725 images in 0:27, 26.8 images/s

``TRAPEDGE_PROGRESS=0`` silences it (``lines`` or ``bar`` forces that form); ``enabled=False``
silences one use.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, Protocol, TextIO, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)

ENV = "TRAPEDGE_PROGRESS"
FIRST_AFTER = 2.0
EVERY_SECONDS = 30.0
EVERY_FRACTION = 0.1


class Progress(Protocol[T_co]):
    """What a caller may do with a progress wrapper (a tqdm bar offers the same)."""

    def __iter__(self) -> Iterator[T_co]: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def write(self, line: str) -> Any: ...

    def close(self) -> Any: ...

    def __enter__(self) -> Progress[T_co]: ...

    def __exit__(self, error: type[BaseException] | None, *exc: object) -> Any: ...


def progress_mode(enabled: bool = True, stream: TextIO | None = None) -> str:
    """``off``, ``bar`` or ``lines``: the setting in ``$TRAPEDGE_PROGRESS``, else a bar on a terminal."""
    setting = os.environ.get(ENV, "").strip().lower()
    if not enabled or setting in ("0", "off", "false", "no"):
        return "off"
    if setting in ("bar", "lines"):
        return setting
    isatty = getattr(stream if stream is not None else sys.stderr, "isatty", None)
    return "bar" if isatty is not None and isatty() else "lines"


def progress(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "item", *,
             enabled: bool = True, leave: bool = True, stream: TextIO | None = None,
             clock: Callable[[], float] = time.monotonic) -> Progress[T]:
    """``iterable`` with its progress shown: a tqdm bar on a terminal, else plain lines on stderr.

    Args:
        total: how many items (default ``len(iterable)`` when it has one).
        desc: what is being done (``detect``, ``epoch 3/30``), the start of each line.
        unit: one item, singular (``image``, ``batch``); lines use its plural.
        enabled: False shows nothing (as does ``TRAPEDGE_PROGRESS=0``).
        leave: keep the bar (or write the summary line) at the end; False for inner loops, whose
            summary line is written only when progress lines were.
        stream: where the bar or lines go (default ``sys.stderr`` at the time of the call).
        clock: seconds, for the line form's rate and schedule (tests pass a fake one).
    """
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)  # type: ignore[arg-type]
    stream = stream if stream is not None else sys.stderr
    mode = progress_mode(enabled, stream)
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=stream, dynamic_ncols=True)
    return ProgressLines(iterable, total, desc, unit, stream=None if mode == "off" else stream, leave=leave,
                         clock=clock)


class ProgressLines(Generic[T]):
    """Plain progress lines at a bounded rate; ``stream=None`` writes nothing at all."""

    def __init__(self, iterable: Iterable[T], total: int | None, desc: str, unit: str, *,
                 stream: TextIO | None, leave: bool = True, clock: Callable[[], float] = time.monotonic):
        self.iterable, self.total, self.desc, self.stream, self.leave = iterable, total, desc, stream, leave
        self.unit, self.units = unit, plural(unit)
        self.clock, self.started = clock, clock()
        self.n, self.postfix, self.closed, self.pending = 0, "", False, False
        self.lines = 0
        self.last_at, self.last_n = self.started, 0

    def __iter__(self) -> Iterator[T]:
        for item in self.iterable:
            self.pending = True
            yield item
            self.pending = False
            self.update()
        self.close()

    def __enter__(self) -> ProgressLines[T]:
        return self

    def __exit__(self, error: type[BaseException] | None, *exc: object) -> None:
        self.close(finished=error is None)

    def update(self, n: int = 1) -> None:
        """Count ``n`` more items done; write a line when one is due."""
        self.n += n
        now = self.clock()
        if self.stream is not None and self._due(now):
            self._emit(self._line(now))
            self.last_at, self.last_n, self.lines = now, self.n, self.lines + 1

    def set_postfix(self, **values: Any) -> None:
        """Figures appended to the next lines (``loss=0.412`` → ``, loss 0.412``)."""
        self.postfix = "".join(f", {key} {value}" for key, value in values.items())

    def write(self, line: str) -> None:
        """A line of its own on stdout (an epoch's figures), as ``tqdm.write`` would print it."""
        if self.stream is not None:
            print(line, flush=True)

    def close(self, finished: bool = True) -> None:
        """Write the summary line (once): the count, the time taken and the mean rate.

        Args:
            finished: the item being worked on is done (a loop broke out after it), so it counts.
        """
        if self.closed:
            return
        self.closed = True
        self.n += finished and self.pending
        if self.stream is not None and (self.leave or self.lines):
            now = self.clock()
            elapsed = now - self.started
            self._emit(f"{self.desc}: {self._count()} in {clock_time(elapsed)}, {self._rate(elapsed)}{self.postfix}")

    def _due(self, now: float) -> bool:
        if now - self.started < FIRST_AFTER or (self.total is not None and self.n >= self.total):
            return False
        if not self.lines or now - self.last_at >= EVERY_SECONDS:
            return True
        return bool(self.total) and self.n - self.last_n >= EVERY_FRACTION * (self.total or 0)

    def _line(self, now: float) -> str:
        elapsed = now - self.started
        parts = [f"{self.desc}: {self._count()}", self._rate(elapsed)]
        if self.total and self.n:
            parts[0] += f" ({100 * self.n // self.total}%)"
            parts.append(f"ETA {clock_time((self.total - self.n) * elapsed / self.n)}")
        return ", ".join(parts) + self.postfix

    def _count(self) -> str:
        return f"{self.n}/{self.total} {self.units}" if self.total is not None else f"{self.n} {self.units}"

    def _rate(self, elapsed: float) -> str:
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if 0 < rate < 1:
            return f"{1 / rate:.1f} s/{self.unit}"
        return f"{rate:.1f} {self.units}/s"

    def _emit(self, line: str) -> None:
        assert self.stream is not None
        print(line, file=self.stream, flush=True)


def plural(unit: str) -> str:
    """``image`` → ``images``, ``batch`` → ``batches``, ``epoch`` → ``epochs``."""
    return unit + ("es" if unit.endswith(("s", "sh", "tch", "x")) else "s")


def clock_time(seconds: float) -> str:
    """``0:23``, ``12:05``, ``1:02:09``."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
