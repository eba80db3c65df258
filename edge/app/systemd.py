"""systemd service integration without libsystemd: readiness, status and watchdog notifications.

Speaks the ``sd_notify`` protocol: newline-separated ``KEY=VALUE`` assignments in one datagram to
the unix socket named by ``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace). Outside
systemd (no ``$NOTIFY_SOCKET``) every call is a no-op that returns False, so the appliance runs the
same from a shell.

Typical main loop::

    systemd.ready()
    watchdog = Watchdog()
    while running:
        process_next_frame()
        watchdog.tick()
    systemd.stopping()
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _socket_address() -> str | None:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address, or None when unset or not a unix socket."""
    name = os.environ.get("NOTIFY_SOCKET", "")
    if name.startswith("@"):
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    if name:
        log.debug("NOTIFY_SOCKET=%s is not a unix socket path; notifications disabled", name)
    return None


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager.

    Args:
        state: one or more newline-separated ``KEY=VALUE`` assignments.

    Returns:
        True when the datagram was sent; False outside systemd or when sending failed (logged:
        a service manager that went away must not stop the appliance).
    """
    address = _socket_address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError as exc:
        log.warning("systemd notification %r not sent to %s: %s", state.split("=", 1)[0],
                    os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def ready() -> bool:
    """Tell systemd that start-up is finished (``Type=notify`` waits for this)."""
    return notify("READY=1")


def stopping() -> bool:
    """Tell systemd that the service is shutting down."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status`` (newlines become spaces)."""
    return notify("STATUS=" + " ".join(text.splitlines()))


def watchdog() -> bool:
    """Ping the watchdog: the service is alive (``WatchdogSec=`` restarts it when pings stop)."""
    return notify("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings: half of ``$WATCHDOG_USEC``, or None when not requested.

    None also when ``$WATCHDOG_PID`` is set to another process's id (the variables were inherited,
    the watchdog is not ours) or when ``$WATCHDOG_USEC`` is not a positive integer.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    try:
        timeout = int(usec)
        if pid and int(pid) != os.getpid():
            return None
    except ValueError:
        log.warning("ignoring invalid WATCHDOG_USEC=%r / WATCHDOG_PID=%r", usec, pid)
        return None
    return timeout / 2e6 if timeout > 0 else None


class Watchdog:
    """Pings the systemd watchdog from the main loop, at most once per interval.

    Args:
        interval: seconds between pings; None (the default) takes :func:`watchdog_interval`,
            which leaves the watchdog disabled outside systemd or when the unit sets no WatchdogSec.
        clock: monotonic time source (replaceable in tests).
    """

    def __init__(self, interval: float | None = None, clock: Callable[[], float] = time.monotonic):
        self.interval = watchdog_interval() if interval is None else interval
        self._clock = clock
        self._last: float | None = None

    @property
    def enabled(self) -> bool:
        return self.interval is not None

    def tick(self) -> bool:
        """Call once per main-loop iteration; pings when an interval has passed since the last ping.

        Returns:
            True when a ping was sent by this call.
        """
        if self.interval is None:
            return False
        now = self._clock()
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return watchdog()
