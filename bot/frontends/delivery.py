"""The delivery loop every chat frontend shares: follow a platform's job events, show progress, send
each finished job's result once, and record in the store whether it arrived.

A frontend supplies a `ChatPlatform`, the few things only it knows: which jobs it follows and how to
show their progress, how to send a result, and which of its errors mean "gone for good"
(`Undeliverable`) or "try again later" (`RetryLater`). The loop does the rest, the same way for
every platform:

- One subscription to the platform's events, opened *before* the undelivered results of the last
  run are read, so a job finishing in between is seen one way or the other.
- One delivery task per job however often it is asked for (a final event, the recovery at start);
  a job whose delivery is no longer pending in the store is left alone.
- `Undeliverable` marks the result failed; `RetryLater` tries again with back-off for as long as
  the bot runs (a result still pending when it stops is sent at the next start); success marks it
  delivered. Anything else is logged and leaves the result pending.
- Each event is handled under its own exception handler: one bad event never ends the loop.
- Position and step events of jobs the platform does not follow cost nothing: with thousands of
  jobs waiting, every batch announces thousands of positions. Only a "queued" or "started" event
  lets the platform take up a job it does not follow yet (`adopt`), e.g. one queued before a restart.

No platform SDK is imported here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from bot.core.jobs import DELIVERY_PENDING, Job

log = logging.getLogger(__name__)

FINAL = ("done", "failed", "cancelled")
ADOPTING = ("queued", "started")  # the events that may make a platform follow a job it does not follow yet
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0


class Undeliverable(Exception):
    """The result can never reach its user (chat or channel gone, bot blocked, image file missing)."""


class RetryLater(Exception):
    """Sending failed in a way that may pass (network down, platform overloaded, flood limit)."""

    def __init__(self, reason: str, after: float | None = None) -> None:
        super().__init__(reason)
        self.after = after  # seconds the platform asked us to wait, if it said


class ChatPlatform(Protocol):
    """What a chat frontend tells the loop. Hooks run on the event loop; none may wait on the network
    except `send_result`, since they hold up the events of every other job."""

    def follows(self, job_id: int) -> bool:
        """Whether progress events of this job are shown somewhere."""

    async def adopt(self, job_id: int) -> bool:
        """Start following a job just queued or started, if its progress can be shown; called only for
        "queued" and "started" events of jobs not followed. Returns whether it is followed now."""

    async def on_progress(self, job_id: int, event: dict[str, Any]) -> None:
        """A non-final event ("queued", "started", "progress", "position") of a followed job."""

    async def send_result(self, job: Job) -> None:
        """Send a finished job (done, failed or cancelled) to its user. Raises `Undeliverable` or
        `RetryLater`; after `RetryLater` it is called again and must not repeat what already went out."""

    async def release(self, job_id: int) -> None:
        """The delivery of this job is over (sent, failed, not pending, or stopped): forget its state."""


class DeliveryLoop:
    def __init__(self, service: Any, platform: str, hooks: ChatPlatform) -> None:
        self.service = service
        self.platform = platform
        self.hooks = hooks
        self._events: Any = None
        self._listener: asyncio.Task | None = None
        self._delivering: dict[int, asyncio.Task] = {}

    async def start(self) -> None:
        # Subscribe first: a job that finishes while the undelivered ones are read is in the
        # subscription or in the list (or both: the second delivery of it is skipped).
        self._events = self.service.subscribe(None, self.platform)
        self._listener = asyncio.create_task(self._listen(), name=f"{self.platform}-events")
        pending = await self.service.undelivered(self.platform)
        if pending:
            log.info("%s: delivering %d result(s) left from before the restart", self.platform, len(pending))
        for job in pending:
            self.deliver(job.id)

    async def stop(self) -> None:
        """Stop following; what is not delivered yet stays pending for the next start."""
        if self._events is not None:
            self._events.close()
        tasks = [task for task in (self._listener, *self._delivering.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def deliver(self, job_id: int) -> None:
        """Send a finished job's result (once, however often this is called)."""
        if job_id in self._delivering:
            return
        task = asyncio.create_task(self._deliver(job_id), name=f"{self.platform}-deliver-{job_id}")
        self._delivering[job_id] = task
        task.add_done_callback(lambda _: self._delivering.pop(job_id, None))

    # --- events ------------------------------------------------------------------------------------

    async def _listen(self) -> None:
        async for event in self._events:
            try:
                await self._on_event(event)
            except Exception:  # one bad event must not end the following of every job
                log.exception("%s: could not handle event %s", self.platform, event)

    async def _on_event(self, event: dict[str, Any]) -> None:
        job_id, kind = event["job"], event["type"]
        if kind in FINAL:
            self.deliver(job_id)
            return
        if not self.hooks.follows(job_id):
            # Not followed: a position or step event ends here, without a store read.
            if kind not in ADOPTING or job_id in self._delivering or not await self.hooks.adopt(job_id):
                return
        await self.hooks.on_progress(job_id, event)

    # --- delivering --------------------------------------------------------------------------------

    async def _deliver(self, job_id: int) -> None:
        try:
            job = await self.service.job(job_id)
            if job.delivery == DELIVERY_PENDING:
                await self._send(job)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the store closed under it: the result stays pending for the next start
            log.exception("%s: job %d: delivery stopped", self.platform, job_id)
        finally:
            await self.hooks.release(job_id)

    async def _send(self, job: Job) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                await self.hooks.send_result(job)
            except Undeliverable as error:
                log.warning("%s: job %d: result not delivered, giving up: %s", self.platform, job.id, error)
                await self.service.mark_delivered(job.id, False)
                return
            except RetryLater as error:
                wait = delay if error.after is None else max(delay, error.after)
                log.warning("%s: job %d: result not delivered (%s); retrying in %.0f s", self.platform, job.id,
                            error, wait)
                await asyncio.sleep(wait)
                if error.after is None:  # the platform said how long a flood limit lasts: no need to back off
                    delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            await self.service.mark_delivered(job.id)
            log.info("%s: job %d delivered", self.platform, job.id)
            return
