"""Login throttling: at most so many password checks a minute per client address and per user name.

Pure bookkeeping over timestamps the caller passes in (``time.monotonic()`` in the server, chosen
values in tests). Every admitted attempt counts, right or wrong, so a burst of concurrent attempts
is cut at the limit too; a refused attempt does not count, so the wait it is told is the real one.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

WINDOW_S = 60.0


@dataclass
class SlidingWindow:
    """At most ``limit`` events per key in any ``window_s`` seconds."""

    limit: int
    window_s: float = WINDOW_S
    events: dict[str, deque[float]] = field(default_factory=dict)
    pruned_at: float = -math.inf

    def wait(self, key: str, now: float) -> float:
        """Seconds until ``key`` may have another event (0: now)."""
        stamps = self.events.get(key)
        while stamps and stamps[0] <= now - self.window_s:
            stamps.popleft()
        if not stamps or len(stamps) < self.limit:
            return 0.0
        return stamps[0] + self.window_s - now

    def add(self, key: str, now: float) -> None:
        self.events.setdefault(key, deque()).append(now)
        if now - self.pruned_at > self.window_s:  # forget keys that went quiet (memory stays bounded)
            self.events = {k: v for k, v in self.events.items() if v and v[-1] > now - self.window_s}
            self.pruned_at = now


@dataclass
class LoginThrottle:
    """Per-address and per-user sliding windows over login attempts."""

    per_address: SlidingWindow
    per_user: SlidingWindow

    @classmethod
    def per_minute(cls, per_address: int, per_user: int) -> LoginThrottle:
        return cls(SlidingWindow(per_address), SlidingWindow(per_user))

    def admit(self, address: str, user: str, now: float) -> tuple[int, str]:
        """``(0, "")`` and the attempt counted, or ``(seconds to wait, why)`` and nothing counted."""
        user = user[:64]
        for window, key, why in ((self.per_address, address, "from this address"), (self.per_user, user, "for this user")):
            wait = window.wait(key, now)
            if wait > 0:
                return max(1, math.ceil(wait)), f"too many login attempts {why}"
        self.per_address.add(address, now)
        self.per_user.add(user, now)
        return 0, ""
