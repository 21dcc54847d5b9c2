"""How often a key may do something costly within a sliding window (in memory: a restart forgets)."""

from __future__ import annotations

import time
from collections import defaultdict, deque

from bot.core.errors import UserError

SWEEP_ABOVE = 1024  # keys held before the stale ones are forgotten


class RateLimit:
    """At most `limit` times per key within `window` seconds (0: no limit); `take` counts one for
    each of its keys (a user and their address) or refuses with the `refusal` message."""

    def __init__(self, limit: int, window: float, refusal: str) -> None:
        self.limit = limit
        self.window = window
        self.refusal = refusal
        self.times: dict[str, deque[float]] = defaultdict(deque)
        self._next_sweep = 0.0

    def take(self, *keys: str | None) -> None:
        if not self.limit:
            return
        now = time.monotonic()
        present = [key for key in keys if key]
        for key in present:
            times = self.times[key]
            while times and times[0] <= now - self.window:
                times.popleft()
            if len(times) >= self.limit:
                raise UserError(self.refusal, count=len(times), limit=self.limit)
        for key in present:
            self.times[key].append(now)
        # Forget keys with nothing in the window, at most once a window: memory stays bounded and
        # a crowd of recent callers does not make every call walk them all.
        if len(self.times) > SWEEP_ABOVE and now >= self._next_sweep:
            self._next_sweep = now + self.window
            for key in [key for key, times in self.times.items() if times[-1] <= now - self.window]:
                del self.times[key]
