"""Job events, fanned out to whoever follows them: one job (an API client's stream), every job of
one user (a web page's stream) or every job of a platform (a chat frontend's delivery loop).

Events only tell subscribers sooner what the store already says; a subscriber that misses one
reads the job. Publishing costs the number of subscribers interested in that event, not the
number of subscribers in all.

An event is a dict: {"type": "queued" | "started" | "progress" | "position" | "done" | "failed" |
"cancelled", "job": id, ...}.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

FINAL_EVENTS = ("done", "failed", "cancelled")


class Subscription:
    """Events of one job (or of one user's jobs, or of a platform), registered from the moment it is created so
    nothing published in between is missed. Iterate it, or `await next(timeout)`; `close()` it."""

    def __init__(self, bus: "EventBus", job_id: int | None, platform: str | None, user: str | None = None) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.job_id = job_id
        self.platform = platform
        self.user = user  # a user key ("web:KEY"): every job of that user
        self._bus = bus
        bus._add(self)

    async def next(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; raises asyncio.TimeoutError after `timeout` seconds (nothing is lost)."""
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self._bus._discard(self)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.queue.get()


class EventBus:
    def __init__(self) -> None:
        self._by_job: dict[int, set[Subscription]] = defaultdict(set)
        self._by_platform: dict[str | None, set[Subscription]] = defaultdict(set)  # None: every platform
        self._by_user: dict[str, set[Subscription]] = defaultdict(set)
        self.published = 0  # counter, for /metrics

    def subscribe(self, job_id: int | None = None, platform: str | None = None, user: str | None = None) -> Subscription:
        return Subscription(self, job_id, platform, user)

    def publish(self, event: dict[str, Any], platform: str, user: str | None = None) -> None:
        """Tell the event to the followers of its job, of its `platform` and of its `user` (the
        job's user key: given by every publisher that knows it)."""
        self.published += 1
        for subscription in (*self._by_job.get(event.get("job"), ()), *self._by_platform.get(platform, ()),
                             *self._by_platform.get(None, ()), *(self._by_user.get(user, ()) if user else ())):
            if subscription.platform in (None, platform):
                subscription.queue.put_nowait(event)

    def watching(self, job_id: int, platform: str | None = None, user: str | None = None) -> bool:
        """Does anyone follow this job: itself, (given its user key) every job of its user, or
        (given its platform) every job of that platform?"""
        if self._by_job.get(job_id) or (user is not None and self._by_user.get(user)):
            return True
        return platform is not None and bool(self._by_platform.get(platform) or self._by_platform.get(None))

    def users_followed(self) -> set[str]:
        """Users whose every job someone follows (a web page's stream)."""
        return {user for user, subscribers in self._by_user.items() if subscribers}

    def platforms_followed(self) -> set[str | None]:
        """Platforms whose every job someone follows (None: all platforms)."""
        return {platform for platform, subscribers in self._by_platform.items() if subscribers}

    def jobs_followed(self) -> list[int]:
        return [job_id for job_id, subscribers in self._by_job.items() if subscribers]

    def _add(self, subscription: Subscription) -> None:
        if subscription.job_id is not None:
            self._by_job[subscription.job_id].add(subscription)
        elif subscription.user is not None:
            self._by_user[subscription.user].add(subscription)
        else:
            self._by_platform[subscription.platform].add(subscription)

    def _discard(self, subscription: Subscription) -> None:
        if subscription.job_id is not None:
            _remove(self._by_job, subscription.job_id, subscription)
        elif subscription.user is not None:
            _remove(self._by_user, subscription.user, subscription)
        else:
            self._by_platform[subscription.platform].discard(subscription)


def _remove(index: dict[Any, set[Subscription]], key: Any, subscription: Subscription) -> None:
    """Take `subscription` out of `index[key]`, and the key with its last one (no empty sets pile up)."""
    subscribers = index.get(key)
    if subscribers is not None:
        subscribers.discard(subscription)
        if not subscribers:
            del index[key]
