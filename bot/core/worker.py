"""The worker loop: feeds the executor from the queue and never dies silently.

Settings come in, nothing is imported from the configuration (as in arq's `Worker`); `start()` and
`stop()` are its lifecycle; counters are attributes. Each pass picks a batch (`Scheduler`),
claims it in the store, hands it to the executor and records every outcome. Up to
`executor.capacity` batches are in flight at once (one per GPU, or per Ray replica slot); the rest
of the backlog stays in the queue, where fairness and positions are decided.

Supervision: any exception in a pass (a database write that failed, a bug) is logged, the jobs the
pass held go back to the queue, `problem` says what went wrong (so /healthz answers 503), and the
loop tries again after a back-off that doubles up to `MAX_BACKOFF` seconds. An executor that
raises fails the batch's jobs with the reason instead; the next batch runs as usual. An executor
that cannot reach its workers (`ExecutorUnavailable`: a Ray cluster that is down) gives the jobs
back unchanged, without counting an attempt, and the loop backs off until it is reachable again.
An outcome marked `requeue` (a replica died under the batch) puts its job back in the queue within
`max_attempts`; the same seed makes the same image on the next try. After each batch the waiting
jobs hear their new places (`PositionAnnouncer`, bot/core/positions.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bot.config import QueueConfig
from bot.core.eta import RunningBatch
from bot.core.events import EventBus
from bot.core.executor import BatchItem, Executor, ExecutorUnavailable, Outcome, StepProgress
from bot.core.jobs import Job
from bot.core.positions import PositionAnnouncer
from bot.core.scheduler import Scheduler
from bot.core.store import Store
from bot.core.uploads import UploadStore
from bot.core.waiting import WaitingIndex

log = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5  # seconds before the first retry after a failed pass
MAX_BACKOFF = 30.0


class Worker:
    def __init__(self, settings: QueueConfig, store: Store, waiting: WaitingIndex, scheduler: Scheduler,
                 executor: Executor, events: EventBus, idle_wait: float = 2.0,
                 uploads: UploadStore | None = None) -> None:
        self.settings = settings
        self.uploads = uploads  # a cancelled job's copies of its uploads are removed with it
        self.store = store
        self.waiting = waiting
        self.scheduler = scheduler
        self.executor = executor
        self.events = events
        self.idle_wait = idle_wait  # seconds an idle loop sleeps when nothing wakes it
        # Counters and state, read by /healthz and /metrics.
        self.batches = 0
        self.failed_passes = 0
        self.problem: str | None = None  # why the last pass failed, until one succeeds
        self.requeued = 0  # jobs an executor lost and the queue took back
        self.in_flight: list[RunningBatch] = []  # batches on the executor now, oldest first
        self._held: set[int] = set()  # claimed by this worker, outcome not recorded yet
        self._batch_tasks: dict[asyncio.Task, RunningBatch] = {}
        self._cancel_requested: set[int] = set()
        self.positions = PositionAnnouncer(waiting, events)
        self._wake = asyncio.Event()
        self._stopping = False
        self._was_idle = True
        self._task: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="imagebot-worker")

    async def stop(self, grace: float) -> None:
        """Let the running batch finish within `grace` seconds, else cancel it; then give back
        whatever is still claimed (a job stopped half-way runs again at the next start)."""
        self._stopping = True
        self._wake.set()
        tasks = [task for task in (self._task, *self._batch_tasks) if task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
        self._batch_tasks.clear()
        self.in_flight.clear()
        await self._give_back_held()

    @property
    def capacity(self) -> int:
        """Batches the executor takes at once; an executor that does not say takes one."""
        return max(1, int(getattr(self.executor, "capacity", 1)))

    @property
    def running(self) -> RunningBatch | None:
        """The in-flight batch that frees its slot first, by its progress so far: what a waiting
        job waits for. None when nothing runs."""
        if not self.in_flight:
            return None
        def left(batch: RunningBatch) -> float:
            seconds = batch.remaining_seconds()
            return float("inf") if seconds is None else seconds
        return min(self.in_flight, key=left)

    def batch_of(self, job_id: int) -> RunningBatch | None:
        return next((batch for batch in self.in_flight if job_id in batch.job_ids), None)

    @property
    def alive(self) -> bool:
        return self._task is not None and not self._task.done()

    def wake(self) -> None:
        """Something was queued: look at the queue now rather than at the next idle timeout."""
        self._wake.set()

    def told_position(self, job_id: int, position: int) -> None:
        """The job's follower already knows this position (it was in the "queued" answer)."""
        self.positions.told(job_id, position)

    def request_cancel(self, job_id: int) -> None:
        """Stop a running job at its next step."""
        self._cancel_requested.add(job_id)

    # --- the loop ---------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        backoff = FIRST_BACKOFF
        while not self._stopping:
            try:
                self._reap_batches()
                await self._give_back_held()
                await self._pass()
            except asyncio.CancelledError:
                raise
            except ExecutorUnavailable as error:  # expected while a cluster is down: no traceback
                self.failed_passes += 1
                self.problem = f"{error}; jobs wait in the queue, retrying in {backoff:g} s"
                log.warning("%s; jobs wait in the queue, retrying in %g s", error, backoff)
                await self._recover_after_failure(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Exception as error:
                self.failed_passes += 1
                self.problem = f"the worker failed ({type(error).__name__}: {error}); retrying in {backoff:g} s"
                log.exception("worker pass failed; jobs it held go back to the queue, retrying in %g s", backoff)
                await self._recover_after_failure(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
            else:
                self.problem = None
                backoff = FIRST_BACKOFF

    async def _recover_after_failure(self, backoff: float) -> None:
        try:
            await self._give_back_held()
        except Exception as again:  # still failing: the next pass tries again
            log.warning("could not give jobs %s back yet: %s", sorted(self._held), again)
        await self._sleep(backoff)

    async def _pass(self) -> None:
        if len(self._batch_tasks) >= self.capacity:
            await self._sleep(self.idle_wait)  # a finishing batch (or a stop) wakes it
            return
        if not len(self.waiting):
            await self._idle()
            return
        if self._was_idle and self.settings.batch_window > 0:
            # Requests often come in bursts (a button pressed by several people, a script):
            # a moment's wait lets them share the first batch instead of queueing behind it.
            await asyncio.sleep(self.settings.batch_window)
        self._was_idle = False
        picked = self.scheduler.pick(self.waiting, self.executor.loaded_model(), time.time())
        self._held.update(job.id for job in picked)
        jobs = await self.store.claim([job.id for job in picked])
        claimed = {job.id for job in jobs}
        self.waiting.take([job for job in picked if job.id in claimed])
        for job in picked:
            if job.id not in claimed:  # cancelled while it was being picked: no longer waiting
                self.waiting.remove(job.id)
                self._held.discard(job.id)
        if jobs:
            self._start_batch(jobs)
        else:
            await self.announce_positions()
        if len(self._batch_tasks) >= self.capacity:
            # The executor is full: give the batch the slot now, rather than
            # picking (and claiming) the next one before it has to.
            await self._sleep(self.idle_wait)

    def _start_batch(self, jobs: list[Job]) -> None:
        batch = RunningBatch(tuple(job.id for job in jobs), time.monotonic())
        self.in_flight.append(batch)
        task = asyncio.create_task(self._run(jobs, batch), name=f"imagebot-batch-{batch.job_ids[0]}")
        self._batch_tasks[task] = batch
        task.add_done_callback(lambda _: self._wake.set())

    def _reap_batches(self) -> None:
        """Forget finished batch tasks; a batch whose outcomes could not be recorded fails the
        pass (its jobs are still held, so they go back to the queue)."""
        error: BaseException | None = None
        for task in [task for task in self._batch_tasks if task.done()]:
            batch = self._batch_tasks.pop(task)
            if batch in self.in_flight:
                self.in_flight.remove(batch)
            if not task.cancelled() and task.exception() is not None and error is None:
                error = task.exception()
        if error is not None:
            raise error

    async def _idle(self) -> None:
        self._wake.clear()
        if self._batch_tasks and all(task.done() for task in self._batch_tasks):
            return  # a batch finished meanwhile: reap it first
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=self.idle_wait)
        except asyncio.TimeoutError:
            pass
        self._was_idle = True

    async def _sleep(self, seconds: float) -> None:
        """A back-off that a stop(), a new job or a finished batch cuts short."""
        self._wake.clear()
        if self._stopping or any(task.done() for task in self._batch_tasks):
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            pass

    # --- one batch ----------------------------------------------------------------------------------

    async def _run(self, jobs: list[Job], running: RunningBatch) -> None:
        ids = running.job_ids
        by_id = {job.id: job for job in jobs}
        self.batches += 1
        for job in jobs:
            self.events.publish({"type": "started", "job": job.id, "batch": list(ids)}, job.origin.platform,
                                job.origin.user_key)

        def on_progress(update: StepProgress) -> None:
            if running not in self.in_flight:
                return
            running.step, running.total = update.step, update.total
            running.previews.update(update.previews)
            for job_id in ids:
                self.events.publish({"type": "progress", "job": job_id, "step": update.step, "total": update.total,
                                     "preview": job_id in update.previews}, by_id[job_id].origin.platform,
                                    by_id[job_id].origin.user_key)

        try:
            outcomes = await self.executor.run([BatchItem(job.id, job.request, job.public_id) for job in jobs], on_progress,
                                               self._cancel_requested.__contains__, self.settings.job_timeout)
        except ExecutorUnavailable as error:
            # Nothing ran: the jobs stay as they were (the claim's attempt is given back) and the
            # pass fails, so the loop backs off and /healthz says why until the executor is back.
            for job_id in ids:
                await self.store.refund_attempt(job_id)
            raise
        except Exception as error:  # the executor itself broke: fail these jobs with the reason, keep serving
            log.exception("executor failed on jobs %s", ids)
            outcomes = [Outcome(job_id, error=f"generation failed: {error}", error_key="generation_failed",
                                error_params={"error": str(error)}) for job_id in ids]
        finally:
            if running in self.in_flight:
                self.in_flight.remove(running)
        for outcome in outcomes:
            await self._record(by_id[outcome.job_id], outcome)
        await self.announce_positions()

    async def _record(self, job: Job, outcome: Outcome) -> None:
        platform = job.origin.platform
        if outcome.requeue and job.id not in self._cancel_requested and job.attempts < self.settings.max_attempts:
            # Lost with its worker (a replica or node died): it runs again, same seed, same image.
            log.warning("job %d was lost on the executor (%s); queued again (attempt %d of %d)", job.id,
                        outcome.error, job.attempts, self.settings.max_attempts)
            self.requeued += 1
            await self._give_back(job.id)
            self._cancel_requested.discard(job.id)
            return
        if outcome.requeue and job.id not in self._cancel_requested:
            outcome = Outcome(job.id, error=f"The worker stopped while making this ({job.attempts} attempts); giving up.",
                              error_key="worker_crashed", error_params={"attempts": job.attempts})
        if outcome.cancelled or outcome.requeue:
            await self.store.mark_cancelled(job.id)
            self._discard_uploads(job)
            event: dict[str, Any] = {"type": "cancelled", "job": job.id}
        elif outcome.error is not None:
            await self.store.fail(job.id, outcome.error, outcome.error_key, outcome.error_params)
            event = {"type": "failed", "job": job.id, "error": outcome.error, "error_key": outcome.error_key}
            log.warning("job %d failed: %s", job.id, outcome.error)
        else:
            await self.store.finish(job.id, outcome.images, outcome.grid)
            event = {"type": "done", "job": job.id, "images": [i.file for i in outcome.images], "grid": outcome.grid}
            log.info("job %d done: %d image(s)", job.id, len(outcome.images))
        self._held.discard(job.id)
        self._cancel_requested.discard(job.id)
        self.events.publish(event, platform, job.origin.user_key)

    async def _give_back_held(self) -> None:
        """Jobs claimed by a pass that failed go back to the queue (or end, if cancelled meanwhile).
        Jobs of batches still in flight are not touched."""
        in_flight = {job_id for batch in self.in_flight for job_id in batch.job_ids}
        for job_id in sorted(self._held - in_flight):
            if job_id in self._cancel_requested:
                if await self.store.mark_cancelled(job_id):
                    job = await self.store.get(job_id)
                    if job is not None:
                        self._discard_uploads(job)
                    self.events.publish({"type": "cancelled", "job": job_id}, job.origin.platform if job else "",
                                        job.origin.user_key if job else None)
                self._cancel_requested.discard(job_id)
            else:
                await self._give_back(job_id)
            self._held.discard(job_id)

    def _discard_uploads(self, job: Job) -> None:
        if self.uploads is not None:
            self.uploads.discard_job_files(job.request.init_image, job.request.mask_image)

    async def _give_back(self, job_id: int) -> None:
        if await self.store.requeue(job_id):
            entry = await self.store.queued_entry(job_id)
            if entry is not None:
                self.waiting.add(entry)
            log.info("job %d requeued: it runs again later", job_id)
        self._held.discard(job_id)

    async def announce_positions(self) -> None:
        """Tell waiting jobs their new position after a batch (bot/core/positions.py)."""
        self.positions.announce()
