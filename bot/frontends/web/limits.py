"""What one client may hold or try at once: open event streams, wrong admin tokens and failed sign-ins.

In memory: both are about this process's connections, and a restart clears them harmlessly.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque

from bot.core.errors import UserError


class StreamSlots:
    """Caps open event streams per client and in total: each holds a connection and a
    subscription for as long as its job runs, so one client opening thousands would starve the rest."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client = per_client
        self.total = total
        self.open: Counter[str] = Counter()

    def acquire(self, client: str) -> None:
        """Take a slot for `client`, or refuse (429) when they, or everyone together, hold too many."""
        if self.open[client] >= self.per_client or self.open.total() >= self.total:
            raise UserError("api_too_many_streams")
        self.open[client] += 1

    def release(self, client: str) -> None:
        self.open[client] -= 1
        if self.open[client] <= 0:
            del self.open[client]


class FailureLimit:
    """At most `limit` failures per address within `window` seconds; beyond that the address is
    refused before the token or password is even compared, so neither can be guessed at speed."""

    def __init__(self, limit: int = 10, window: float = 60.0, refusal: str = "api_too_many_admin_failures") -> None:
        self.limit = limit
        self.refusal = refusal  # the UserError key of the answer beyond the limit
        self.window = window
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def check(self, address: str) -> None:
        failures = self.failures.get(address)
        if failures is None:
            return
        while failures and failures[0] <= time.monotonic() - self.window:
            failures.popleft()
        if not failures:
            del self.failures[address]
        elif len(failures) >= self.limit:
            raise UserError(self.refusal)

    def failed(self, address: str) -> None:
        self.failures[address].append(time.monotonic())
