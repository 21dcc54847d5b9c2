"""What one client may hold or try at once: open event streams, wrong admin tokens and failed sign-ins.

In memory: both are about this process's connections, and a restart clears them harmlessly.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict, deque

from bot.core.errors import UserError


class StreamSlots:
    """Caps open event streams per client key, per network address and in total: each holds a
    connection and a subscription for as long as its job runs, so one client opening thousands
    would starve the rest. Keys cost nothing to invent, so the address cap is what holds against
    one machine; `[web] trusted_proxies` decides what the address is behind a proxy."""

    def __init__(self, per_client: int, total: int, per_address: int = 0) -> None:
        self.per_client = per_client
        self.per_address = per_address  # 0: no cap per address
        self.total = total
        self.open: Counter[str] = Counter()  # per client key
        self.open_from: Counter[str] = Counter()  # per address

    def acquire(self, client: str, address: str = "") -> None:
        """Take a slot for `client` at `address`, or refuse (429) when they, their address or
        everyone together hold too many."""
        if (self.open[client] >= self.per_client or self.open.total() >= self.total
                or (self.per_address and address and self.open_from[address] >= self.per_address)):
            raise UserError("api_too_many_streams")
        self.open[client] += 1
        if address:
            self.open_from[address] += 1

    def release(self, client: str, address: str = "") -> None:
        for counts, key in ((self.open, client), (self.open_from, address)):
            if key:
                counts[key] -= 1
                if counts[key] <= 0:
                    del counts[key]


class FailureLimit:
    """At most `limit` failures per address within `window` seconds; beyond that the address is
    refused before the token or password is even compared, so neither can be guessed at speed.

    A password check takes a fraction of a second (scrypt, off the event loop), so a burst of
    guesses sent at once would all pass a check made before it and be counted only after it.
    `attempt` therefore counts a try as failed before the check starts and `succeeded` takes that
    back: of 60 guesses sent at once, the first `limit` are checked and the rest refused.
    """

    def __init__(self, limit: int = 10, window: float = 60.0, refusal: str = "api_too_many_admin_failures") -> None:
        self.limit = limit
        self.refusal = refusal  # the UserError key of the answer beyond the limit
        self.window = window
        self.failures: dict[str, deque[float]] = defaultdict(deque)

    def check(self, address: str) -> None:
        """Refuse (429) an address that has used up its failures."""
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

    def attempt(self, address: str) -> float:
        """Check the address and count this try as a failure until `succeeded` says otherwise;
        returns the try's mark for `succeeded`."""
        self.check(address)
        mark = time.monotonic()
        self.failures[address].append(mark)
        return mark

    def succeeded(self, address: str, mark: float) -> None:
        """The try marked `mark` was right: it no longer counts."""
        failures = self.failures.get(address)
        if failures is not None and mark in failures:
            failures.remove(mark)
            if not failures:
                del self.failures[address]
