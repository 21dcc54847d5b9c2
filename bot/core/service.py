"""The service every frontend talks to: submit, cancel, look up, subscribe, administer.

A slim facade over parts with one job each: `Admission` (validation, quotas, defaults), the
`WaitingIndex` (the queue's fair order in memory), the `Worker` (feeds the executor), the
`EventBus`, the `EtaEstimator`, `Bans`, `Pictures` (uploads, image prompts, /describe),
`DerivedJobs` (reroll, variations, Remix, upscale) and `ModelView` (the models list, choosing the
default model). Its methods that belong to a part only hand the call on, so frontends need to
know the facade alone. SQLite is the truth; memory only makes reading it cheap and wakes things
up. Every refusal is a `UserError` the frontend can show as it is, and the rules of
who may do what (cancel, delete, change defaults) live here, not in the frontends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from bot.config import Config
from bot.core.accounts import Accounts
from bot.core.admission import Admission, Catalog
from bot.core.bans import Bans
from bot.core.derived import DerivedJobs
from bot.core.errors import UserError, require_admin
from bot.core.eta import EtaEstimator
from bot.core.events import FINAL_EVENTS, EventBus, Subscription
from bot.core.executor import Executor
from bot.core.jobs import (CANCELLED, DELIVERED, DELIVERY_FAILED, QUEUED, RUNNING, Job, Origin, QueuedJob,
                           is_public_id)
from bot.core.model_view import ModelView
from bot.core.pictures import Pictures
from bot.core.rates import RateLimit
from bot.core.request import GenerationRequest, RequestOptions, merge_options, options_from_fields, parse_prompt
from bot.core.scheduler import Scheduler
from bot.core.service_types import Health, JobRef, JobView, Submitted
from bot.core.store import Store, storage_errors
from bot.core.upload_quota import upload_quota_limits
from bot.core.uploads import UploadLimits, UploadStore
from bot.core.waiting import WaitingIndex
from bot.core.worker import Worker

log = logging.getLogger(__name__)

HEALTH_PROBE_SECONDS = 1.0  # while the database is failing, /healthz tries a write at most this often
WAIT_RECHECK_SECONDS = 30.0  # wait_finished reads the job again this often without an event

# What frontends import from here: the facade and the values it takes and hands back.
__all__ = ["Catalog", "Health", "JobRef", "JobView", "Service", "Submitted", "Subscription"]


class Service:
    def __init__(self, config: Config, store: Store, executor: Executor, catalog: Catalog) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.catalog = catalog
        self.events = EventBus()
        self.waiting = WaitingIndex()
        self.eta = EtaEstimator(executor.seconds_per_step)
        self.bans = Bans(store)
        self.admission = Admission(config, store, catalog, self.bans)
        self.accounts = Accounts(store, config.web.session_days * 86400)  # [web] auth = "password"
        self.uploads = UploadStore(config.storage.outputs_path(),
                                   UploadLimits(config.limits.max_upload_bytes, config.limits.max_upload_pixels),
                                   upload_quota_limits(config.limits))
        self.pictures = Pictures(self.uploads, self.bans, RateLimit(config.limits.max_describes_per_minute, 60.0,
                                                                    "describe_rate_limited"))
        self.derived = DerivedJobs(config, self.uploads, catalog)
        self.models = ModelView(catalog, executor, store, self.admission)
        scheduler = Scheduler(max_batch=config.engine.max_batch, max_switch_wait=config.queue.max_switch_wait)
        self.worker = Worker(config.queue, store, self.waiting, scheduler, executor, self.events,
                             idle_wait=config.models.rescan_seconds or 2.0, uploads=self.uploads)
        self._accepting = False
        self._last_probe = 0.0

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        recovery = await self.store.recover(self.config.queue.max_attempts)
        if recovery.requeued or recovery.failed:
            log.info("recovered after restart: requeued=%s failed=%s", list(recovery.requeued), list(recovery.failed))
        for entry in await self.store.queued():
            self.waiting.add(entry)
        await self.bans.load()
        self.catalog.scan()
        await self.executor.start()
        self._accepting = True
        self.worker.start()

    async def stop(self) -> None:
        """Stop taking jobs; let the running batch finish within the grace period, else requeue it."""
        self._accepting = False
        await self.worker.stop(self.config.queue.shutdown_grace)
        await self.executor.close()
        for job in await self.store.running():
            await self.store.requeue(job.id)
            log.info("job %d requeued for the next start", job.id)

    # --- submitting ------------------------------------------------------------------------------

    async def submit(self, text: str, origin: Origin, *, image: bytes | str | None = None,
                     mask: bytes | str | None = None, **fields: Any) -> Submitted:
        """Queue a generation. `text` may carry inline flags; `fields` are keyword options.

        `image` (an image prompt) and `mask` (inpainting: white is redrawn) are the bytes a user
        sent, or the handle `upload()` returned for them."""
        options = merge_options(parse_prompt(text), options_from_fields(**fields))
        self.bans.check(origin)  # before any upload is decoded or kept
        async with self.pictures.attached(options, image, mask) as options:
            return await self._queue(options, origin)

    async def upload(self, data: bytes, origin: Origin, what: str = "image") -> str:
        """Check and keep an image (or mask) for a later `submit`; returns its handle (bot/core/pictures.py)."""
        return await self.pictures.upload(data, origin, what)

    async def describe(self, image: bytes | str, origin: Origin) -> list[str]:
        """Prompts the configured captioning model suggests for a picture (bot/core/pictures.py)."""
        return await self.pictures.describe(image, origin)

    async def submit_derived(self, ref: JobRef, action: str, origin: Origin, index: int = 0,
                             prompt: str | None = None) -> Submitted:
        """A new job from a finished one: reroll, variations, Remix, upscale (bot/core/derived.py)."""
        options = self.derived.options(await self.job(ref), ref, action, index, prompt)
        return await self._queue(options, origin)

    async def _queue(self, options: RequestOptions, origin: Origin) -> Submitted:
        if not self._accepting:
            raise UserError("shutting_down")
        request, entry = await self.admission.admit(options, origin)
        self.waiting.add(entry)
        self.worker.wake()
        position, eta = self._waiting_view(entry)
        self.events.publish({"type": "queued", "job": entry.id, "position": position, "eta": eta}, origin.platform,
                           origin.user_key)
        self.worker.told_position(entry.id, position)
        log.info("job %d queued for %s: model=%s images=%d size=%dx%d steps=%d", entry.id, origin.log_name,
                 request.model, request.count, request.width, request.height, request.steps)
        return Submitted(entry.id, entry.public_id, position, eta, request)

    async def resolve_request(self, options: RequestOptions, origin: Origin) -> GenerationRequest:
        """What `options` would become for `origin` (defaults and limits applied), without queueing it."""
        return await self.admission.resolve_request(options, origin)

    # --- looking up --------------------------------------------------------------------------------

    async def job(self, ref: JobRef) -> Job:
        """A job by its public id (what users, URLs and buttons hold) or, for the process's own
        records and events, its internal id."""
        job_id = await self._internal_id(ref)
        job = await self.store.get(job_id) if job_id is not None else None
        if job is None:
            raise UserError("job_not_found", job=ref)
        return job

    async def _internal_id(self, ref: JobRef) -> int | None:
        if isinstance(ref, str):
            return await self.store.id_of(ref) if is_public_id(ref) else None
        return ref if 0 < ref < 2**63 else None  # SQLite's integer range; no other job can exist

    async def status(self, ref: JobRef) -> JobView:
        return self._view(await self.job(ref))

    def _view(self, job: Job) -> JobView:
        if job.status == QUEUED:
            entry = self.waiting.get(job.id)
            if entry is not None:
                return JobView(job, *self._waiting_view(entry))
        running = self.worker.batch_of(job.id)
        if job.status == RUNNING and running:
            return JobView(job, None, self.eta.running(job.request.model, job.request.count, running),
                           running.step, running.total)
        return JobView(job, None, None)

    def _waiting_view(self, entry: QueuedJob) -> tuple[int, float | None]:
        """(position, ETA in seconds) of a waiting job, without walking the queue."""
        position = self.waiting.position(entry.id) or 0
        own = self.eta.job_seconds(entry.model, entry.images, entry.steps)
        mean = self.eta.mean_waiting_seconds(self.waiting.image_steps(), len(self.waiting))
        return position, self.eta.waiting(position, own, mean, self.worker.running)

    def preview(self, job_id: int) -> bytes | None:
        running = self.worker.batch_of(job_id)
        return running.previews.get(job_id) if running else None

    async def history(self, origin: Origin, limit: int = 20) -> list[Job]:
        return await self.store.history(origin.user_key, limit)

    async def queue_of(self, origin: Origin) -> list[JobView]:
        """The user's unfinished jobs with positions and ETAs."""
        return [self._view(job) for job in await self.store.jobs_of(origin.user_key, (QUEUED, RUNNING))]

    async def finished_since(self, origin: Origin, since: float) -> list[Job]:
        """The user's jobs that finished at or after `since` (what a follower that was away missed)."""
        return await self.store.finished_since(origin.user_key, since)

    def subscribe(self, job_id: int | None = None, platform: str | None = None, user: str | None = None) -> Subscription:
        """Follow events of one job, of every job of a platform, or of every job of one user (their
        user key); subscribe before reading the job's state so nothing falls in between."""
        return self.events.subscribe(job_id, platform, user)

    async def wait_finished(self, ref: JobRef) -> Job:
        """The job once it has finished (done, failed or cancelled), woken by its events; the store
        is read again now and then in case an event was missed (the store is the truth)."""
        job = await self.job(ref)
        updates = self.subscribe(job.id)  # before reading the state again: nothing falls in between
        try:
            while not (job := await self.job(job.id)).finished:
                try:
                    while (await updates.next(WAIT_RECHECK_SECONDS))["type"] not in FINAL_EVENTS:
                        pass
                except asyncio.TimeoutError:
                    pass
            return job
        finally:
            updates.close()

    # --- changing jobs ---------------------------------------------------------------------------

    async def owned_job(self, ref: JobRef, by: Origin) -> Job:
        """The job, if `by` may change or delete it (its owner or an admin); else a UserError."""
        job = await self.job(ref)
        if job.origin.user_key != by.user_key and not by.is_admin:
            raise UserError("not_your_job", job=ref)
        return job

    async def own_job_by_prefix(self, prefix: str, by: Origin) -> Job:
        """The caller's unfinished job whose public id starts with `prefix` (the short id chats
        show, e.g. "a3f09c"). Only their own unfinished jobs are searched: a few, so a short prefix
        names one, and it tells nothing about anyone else's jobs."""
        prefix = prefix.strip().lstrip("#").lower()
        if len(prefix) < 4 or not all(c in "0123456789abcdef" for c in prefix):
            raise UserError("job_not_found", job=prefix[:24])
        found = [job for job in await self.store.jobs_of(by.user_key, (QUEUED, RUNNING))
                 if job.public_id.startswith(prefix)]
        if len(found) != 1:
            raise UserError("job_ambiguous" if found else "job_not_found", job=prefix[:24])
        return found[0]

    async def cancel(self, ref: JobRef, by: Origin) -> str:
        """Cancel a queued job at once or stop a running one at its next step (owner or admin)."""
        job = await self.owned_job(ref, by)
        job_id = job.id
        if job.finished:
            raise UserError("already_finished", job=ref, status=job.status)
        if job.origin.user_key != by.user_key:  # an admin stopping someone else's job
            await self.store.audit(by.user_key, "cancel", {"job": job.public_id, "user": job.origin.user_key})
        with storage_errors():
            status = await self.store.cancel(job_id)
        if status == CANCELLED:
            self.waiting.remove(job_id)
            self.uploads.discard_job_files(job.request.init_image, job.request.mask_image)
            self.events.publish({"type": "cancelled", "job": job_id}, job.origin.platform, job.origin.user_key)
            return CANCELLED
        if status == RUNNING:
            self.worker.request_cancel(job_id)
            return "cancelling"
        latest = await self.job(job_id)
        raise UserError("already_finished", job=ref, status=latest.status)

    async def cancel_latest(self, by: Origin) -> tuple[int, str]:
        """Cancel the caller's most recent unfinished job; returns (job id, status as `cancel`)."""
        jobs = await self.store.jobs_of(by.user_key, (QUEUED, RUNNING))
        if not jobs:
            raise UserError("nothing_to_cancel")
        latest = max(job.id for job in jobs)
        return latest, await self.cancel(latest, by)

    async def mark_delivered(self, job_id: int, delivered: bool = True) -> None:
        await self.store.set_delivery(job_id, DELIVERED if delivered else DELIVERY_FAILED)

    async def undelivered(self, platform: str) -> list[Job]:
        """Finished jobs whose result never reached the user (e.g. the process died first)."""
        return await self.store.undelivered(platform)

    # --- defaults -----------------------------------------------------------------------------------

    async def default_model(self, origin: Origin | None = None) -> str:
        return await self.admission.default_model(origin)

    async def set_chat_flags(self, flags: str, by: Origin) -> None:
        await self.admission.set_chat_flags(flags, by)

    async def set_user_flags(self, flags: str, by: Origin) -> None:
        await self.admission.set_user_flags(flags, by)

    async def default_flags(self, origin: Origin) -> dict[str, str | None]:
        return await self.admission.default_flags(origin)

    # --- models and administration -------------------------------------------------------------

    async def set_default_variant(self, scope: str, name: str, by: Origin) -> None:
        """scope "global", or "chat" (the chat of `by`); admins only (bot/core/model_view.py)."""
        await self.models.set_default_variant(scope, name, by)

    async def list_variants(self, origin: Origin | None = None) -> list[dict[str, Any]]:
        return await self.models.list_variants(origin)

    async def reload_models(self, by: Origin) -> dict[str, list[str]]:
        return await self.models.reload_models(by)

    async def ban(self, user_key: str, reason: str, by: Origin) -> list[str]:
        """Refuse every later request of `user_key` ("platform:id", or "address:IP" for everyone at
        that address), telling them `reason`; returns the keys it covers (bot/core/bans.py). Admins only."""
        return await self.bans.ban(user_key, reason, by)

    async def unban(self, user_key: str, by: Origin) -> list[str]:
        return await self.bans.unban(user_key, by)

    async def audit_log(self, by: Origin, limit: int = 50) -> list[dict[str, Any]]:
        """The latest admin actions, newest first. Admins only."""
        require_admin(by)
        return await self.store.audit_log(limit)

    # --- health and metrics ----------------------------------------------------------------------------

    async def health(self) -> Health:
        """Can the bot do its work right now? Problems name what is wrong."""
        problems = []
        if self._accepting and not self.worker.alive:
            problems.append("the worker has stopped")
        if self.worker.problem:
            problems.append(self.worker.problem)
        if self.admission.storage_problem and time.monotonic() - self._last_probe >= HEALTH_PROBE_SECONDS:
            self._last_probe = time.monotonic()
            try:  # the disk may have been freed since: a real write says so
                await self.store.probe_write()
                self.admission.storage_problem = None
            except Exception as error:
                log.warning("database still not writable: %s", error)
        if self.admission.storage_problem:
            problems.append(self.admission.storage_problem)
        return Health(not problems, tuple(problems))

    async def metrics(self) -> dict[str, Any]:
        counts = await self.store.counts_by_status()
        return {"jobs": counts, "queue_depth": len(self.waiting),
                "worker_failed_passes": self.worker.failed_passes, "batches_in_flight": len(self.worker.in_flight),
                "executor_capacity": self.worker.capacity, "jobs_requeued": self.worker.requeued,
                **self.executor.metrics()}

