"""The service every frontend talks to: submit, cancel, look up, subscribe, administer.

It owns the worker loop that feeds the executor from the store. SQLite is the truth; the
`asyncio.Event` only wakes the loop, and the event bus only tells subscribers sooner what the
store already says. Every refusal is a `UserError` the frontend can show as it is.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.config import Config
from bot.core.errors import UserError
from bot.core.executor import BatchItem, Executor, Outcome, StepProgress
from bot.core.jobs import CANCELLED, DELIVERED, DELIVERY_FAILED, QUEUED, RUNNING, Job, Origin
from bot.core.request import (
    GenerationRequest,
    RequestOptions,
    VariantDefaults,
    merge_options,
    options_from_fields,
    parse_model_name,
    parse_prompt,
    resolve,
)
from bot.core.scheduler import Scheduler
from bot.core.store import Store

log = logging.getLogger(__name__)

DEFAULT_MODEL_SETTING = "default_model"
CHAT_MODEL_SETTING = "model"
CHAT_FLAGS_SETTING = "flags"
USER_SCOPE_PREFIX = "user:"  # chat_settings rows of chat "user:<id>" hold one user's own defaults
VARIATION_STRENGTH = 0.6  # how far a variation may move from its source image
UPSCALE_STRENGTH = 0.35  # an upscale keeps the composition and redraws the detail


class Catalog(Protocol):
    """The model store as the service sees it (bot.engine.registry.Registry fits)."""

    def scan(self) -> Any: ...

    def scan_if_due(self) -> Any: ...

    def ready_defaults(self) -> dict[str, VariantDefaults]: ...

    def unavailable(self) -> dict[str, str]: ...

    def entries(self) -> list[Any]: ...


@dataclass(frozen=True)
class Submitted:
    job_id: int
    position: int  # 1 = next to run
    eta_seconds: float | None
    request: GenerationRequest


@dataclass(frozen=True)
class JobView:
    job: Job
    position: int | None  # None once started or finished
    eta_seconds: float | None
    step: int | None = None  # progress of a running job
    total: int | None = None


@dataclass
class _Running:
    job_ids: tuple[int, ...]
    started: float
    step: int = 0
    total: int = 0
    previews: dict[int, bytes] = field(default_factory=dict)


class Subscription:
    """Events of one job (or of a platform), registered from the moment it is created so
    nothing published in between is missed. Iterate it, or `await next(timeout)`; `close()` it."""

    def __init__(self, bus: "EventBus", job_id: int | None, platform: str | None) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()
        self.job_id = job_id
        self.platform = platform
        self._bus = bus
        bus._subscribers.add(self)

    def wants(self, event: dict[str, Any], platform: str) -> bool:
        return (self.job_id is None or self.job_id == event["job"]) and self.platform in (None, platform)

    async def next(self, timeout: float | None = None) -> dict[str, Any]:
        """The next event; raises asyncio.TimeoutError after `timeout` seconds (nothing is lost)."""
        return await asyncio.wait_for(self.queue.get(), timeout)

    def close(self) -> None:
        self._bus._subscribers.discard(self)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self.queue.get()


class EventBus:
    """Fan-out of job events to subscribers: per job, or every job of a platform."""

    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()

    def publish(self, event: dict[str, Any], platform: str) -> None:
        for subscription in list(self._subscribers):
            if subscription.wants(event, platform):
                subscription.queue.put_nowait(event)

    def subscribe(self, job_id: int | None = None, platform: str | None = None) -> Subscription:
        return Subscription(self, job_id, platform)

    def watching(self, job_id: int) -> bool:
        return any(s.job_id is None or s.job_id == job_id for s in self._subscribers)


class Service:
    def __init__(self, config: Config, store: Store, executor: Executor, catalog: Catalog) -> None:
        self.config = config
        self.store = store
        self.executor = executor
        self.catalog = catalog
        self.events = EventBus()
        self.scheduler = Scheduler(max_batch=config.engine.max_batch, max_switch_wait=config.queue.max_switch_wait)
        self._wake = asyncio.Event()
        self._admission = asyncio.Lock()
        self._cancel_requested: set[int] = set()
        self._running: _Running | None = None
        self._accepting = False
        self._stopping = False
        self._worker: asyncio.Task | None = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        recovery = await self.store.recover(self.config.queue.max_attempts)
        if recovery.requeued or recovery.failed:
            log.info("recovered after restart: requeued=%s failed=%s", list(recovery.requeued), list(recovery.failed))
        self.catalog.scan()
        await self.executor.start()
        self._accepting = True
        self._worker = asyncio.create_task(self._work(), name="imagebot-worker")

    async def stop(self) -> None:
        """Stop taking jobs; let the running batch finish within the grace period, else requeue it."""
        self._accepting = False
        self._stopping = True
        self._wake.set()
        if self._worker is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._worker), self.config.queue.shutdown_grace)
        except asyncio.TimeoutError:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._worker = None
        await self.executor.close()
        for job in await self.store.running():
            await self.store.requeue(job.id)
            log.info("job %d requeued for the next start", job.id)

    # --- submitting ------------------------------------------------------------------------------

    async def submit(self, text: str, origin: Origin, **fields: Any) -> Submitted:
        """Queue a generation. `text` may carry inline flags; `fields` are keyword options."""
        if not self._accepting:
            raise UserError("shutting_down")
        reason = await self.store.ban_reason(origin.user_key)
        if reason is not None:
            raise UserError("banned", reason=reason)
        return await self._queue(merge_options(parse_prompt(text), options_from_fields(**fields)), origin)

    async def _queue(self, options: RequestOptions, origin: Origin) -> Submitted:
        if not self._accepting:
            raise UserError("shutting_down")
        request = await self.resolve_request(options, origin)
        async with self._admission:  # quota check and insert as one step, or concurrent requests slip past
            if not origin.is_admin:
                await self._check_quota(origin)
            job_id = await self.store.add_job(request, origin)
            await self.store.add_usage(origin.user_key, request.count)
        self._wake.set()
        position, eta = await self._position(job_id)
        self.events.publish({"type": "queued", "job": job_id, "position": position, "eta": eta}, origin.platform)
        log.info("job %d queued for %s: model=%s images=%d size=%dx%d steps=%d", job_id, origin.user_key,
                 request.model, request.count, request.width, request.height, request.steps)
        return Submitted(job_id, position, eta, request)

    async def submit_derived(self, job_id: int, action: str, origin: Origin, index: int = 0) -> Submitted:
        """A new job from a finished one: "reroll" (same settings, new seed), "variation"
        (image `index` redrawn loosely) or "upscale" (image `index` at twice the size)."""
        source = await self.job(job_id)
        request = source.request
        if action == "reroll":
            options = RequestOptions(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                     model=request.model, steps=request.steps, guidance=request.guidance,
                                     width=request.width, height=request.height, count=request.count,
                                     scheduler=request.scheduler, init_image=request.init_image,
                                     strength=request.strength)
        elif action in ("variation", "upscale"):
            if source.status != "done" or not 0 <= index < len(source.images):
                raise UserError("no_such_image", job=job_id, index=index + 1)
            image = str(self.config.storage.outputs_path() / source.images[index].file)
            scale = 2 if action == "upscale" else 1
            options = RequestOptions(prompt=request.prompt, negative_prompt=request.negative_prompt,
                                     model=request.model, steps=request.steps, guidance=request.guidance,
                                     width=request.width * scale, height=request.height * scale,
                                     count=1 if action == "upscale" else request.count,
                                     scheduler=request.scheduler, init_image=image,
                                     strength=UPSCALE_STRENGTH if action == "upscale" else VARIATION_STRENGTH)
        else:
            raise ValueError(f"unknown action {action!r}")
        return await self._queue(options, origin)

    async def resolve_request(self, options: RequestOptions, origin: Origin) -> GenerationRequest:
        """Apply the chat's default flags and model, then the model's defaults and the limits."""
        # The user's own defaults come first, then the chat's: the nearer setting wins.
        own = await self.store.chat_settings(origin.platform, _user_scope(origin))
        if own.get(CHAT_FLAGS_SETTING):
            options = _with_chat_defaults(options, parse_prompt("x " + own[CHAT_FLAGS_SETTING]))
        chat = await self.store.chat_settings(origin.platform, origin.chat_id) if origin.chat_id else {}
        if chat.get(CHAT_FLAGS_SETTING):
            options = _with_chat_defaults(options, parse_prompt("x " + chat[CHAT_FLAGS_SETTING]))
        self.catalog.scan_if_due()
        default = await self.default_model(origin)
        return resolve(options, self.catalog.ready_defaults(), default, self.config.limits,
                       models_dir=self.config.storage.models_dir, unavailable=self.catalog.unavailable())

    async def _check_quota(self, origin: Origin) -> None:
        limits = self.config.queue
        waiting = await self.store.count_queued(origin.user_key)
        if limits.max_queued_per_user and waiting >= limits.max_queued_per_user:
            raise UserError("queue_full", count=waiting, limit=limits.max_queued_per_user)
        recent = await self.store.usage_last_hour(origin.user_key)
        if limits.max_jobs_per_hour and recent >= limits.max_jobs_per_hour:
            raise UserError("rate_limited", count=recent, limit=limits.max_jobs_per_hour)

    # --- looking up --------------------------------------------------------------------------------

    async def job(self, job_id: int) -> Job:
        if not 0 < job_id < 2**63:  # SQLite's integer range; no such job can exist
            raise UserError("job_not_found", job=job_id)
        job = await self.store.get(job_id)
        if job is None:
            raise UserError("job_not_found", job=job_id)
        return job

    async def status(self, job_id: int) -> JobView:
        job = await self.job(job_id)
        if job.status == QUEUED:
            position, eta = await self._position(job_id)
            return JobView(job, position, eta)
        running = self._running
        if job.status == RUNNING and running and job_id in running.job_ids:
            return JobView(job, None, self._remaining(running, job), running.step, running.total)
        return JobView(job, None, None)

    def preview(self, job_id: int) -> bytes | None:
        running = self._running
        return running.previews.get(job_id) if running and job_id in running.job_ids else None

    async def history(self, origin: Origin, limit: int = 20) -> list[Job]:
        return await self.store.history(origin.user_key, limit)

    async def queue_of(self, origin: Origin) -> list[JobView]:
        """The user's unfinished jobs with positions and ETAs."""
        return [await self.status(job.id) for job in await self.store.jobs_of(origin.user_key, (QUEUED, RUNNING))]

    async def _position(self, job_id: int) -> tuple[int, float | None]:
        queued = await self.store.queued()
        order = self.scheduler.order(queued)
        eta: float | None = 0.0
        running = self._running
        if running is not None:
            eta = self._remaining_batch(running)
        for index, entry in enumerate(order, start=1):
            seconds = self._job_seconds(entry.model, entry.images, await self._steps_of(entry.id))
            eta = None if eta is None or seconds is None else eta + seconds
            if entry.id == job_id:
                return index, eta
        return 0, None

    async def _steps_of(self, job_id: int) -> int:
        job = await self.store.get(job_id)
        return job.request.steps if job else 0

    def _job_seconds(self, model: str, images: int, steps: int) -> float | None:
        per_step = self.executor.seconds_per_step(model)
        return None if per_step is None else per_step * images * steps

    def _remaining(self, running: _Running, job: Job) -> float | None:
        per_step = self.executor.seconds_per_step(job.request.model)
        if per_step is None or not running.total:
            return None
        return per_step * job.request.count * max(0, running.total - running.step)

    def _remaining_batch(self, running: _Running) -> float | None:
        if not running.total:
            return None
        elapsed = time.monotonic() - running.started
        done = max(running.step, 1)
        return elapsed / done * max(0, running.total - running.step)

    def subscribe(self, job_id: int | None = None, platform: str | None = None) -> Subscription:
        """Follow events; subscribe before reading the job's state so nothing falls in between."""
        return self.events.subscribe(job_id, platform)

    # --- changing jobs ---------------------------------------------------------------------------

    async def cancel(self, job_id: int, by: Origin) -> str:
        """Cancel a queued job at once or stop a running one at its next step (owner or admin)."""
        job = await self.owned_job(job_id, by)
        if job.finished:
            raise UserError("already_finished", job=job_id, status=job.status)
        status = await self.store.cancel(job_id)
        if status == CANCELLED:
            self.events.publish({"type": "cancelled", "job": job_id}, job.origin.platform)
            self._wake.set()
            return CANCELLED
        if status == RUNNING:
            self._cancel_requested.add(job_id)
            return "cancelling"
        latest = await self.job(job_id)
        raise UserError("already_finished", job=job_id, status=latest.status)

    async def cancel_latest(self, by: Origin) -> tuple[int, str]:
        """Cancel the caller's most recent unfinished job; returns (job id, status as `cancel`)."""
        jobs = await self.store.jobs_of(by.user_key, (QUEUED, RUNNING))
        if not jobs:
            raise UserError("nothing_to_cancel")
        latest = max(job.id for job in jobs)
        return latest, await self.cancel(latest, by)

    async def owned_job(self, job_id: int, by: Origin) -> Job:
        """The job, if `by` may change or delete it (its owner or an admin); else a UserError."""
        job = await self.job(job_id)
        if job.origin.user_key != by.user_key and not by.is_admin:
            raise UserError("not_your_job", job=job_id)
        return job

    async def mark_delivered(self, job_id: int, delivered: bool = True) -> None:
        await self.store.set_delivery(job_id, DELIVERED if delivered else DELIVERY_FAILED)

    async def undelivered(self, platform: str) -> list[Job]:
        """Finished jobs whose result never reached the user (e.g. the process died first)."""
        return await self.store.undelivered(platform)

    # --- models and administration -------------------------------------------------------------

    async def default_model(self, origin: Origin | None = None) -> str:
        if origin is not None and origin.chat_id:
            chat = await self.store.chat_settings(origin.platform, origin.chat_id)
            if chat.get(CHAT_MODEL_SETTING):
                return chat[CHAT_MODEL_SETTING]
        return await self.store.get_setting(DEFAULT_MODEL_SETTING) or self.config.models.default

    async def set_default_variant(self, scope: str, name: str, by: Origin) -> None:
        """scope "global", or "chat" (the chat of `by`). Admins only; the model must be usable."""
        _require_admin(by)
        name = parse_model_name(name)
        self.catalog.scan_if_due()
        ready = self.catalog.ready_defaults()
        if name not in ready:
            unavailable = self.catalog.unavailable()
            if name in unavailable:
                raise UserError("model_broken", name=name, error=unavailable[name])
            raise UserError("unknown_model", got=name, available=", ".join(sorted(ready)) or "none")
        if scope == "global":
            await self.store.set_setting(DEFAULT_MODEL_SETTING, name)
        else:
            await self.store.set_chat_setting(by.platform, by.chat_id, CHAT_MODEL_SETTING, name)
        await self.store.audit(by.user_key, "set_default_model", {"scope": scope, "chat": by.chat_id, "model": name})

    async def set_chat_flags(self, flags: str, by: Origin) -> None:
        """Per-chat default flags such as "--ar 3:2 --steps 30" (checked now, applied to each request).
        Only those who run the chat (`manages_chat`) or the bot's admins may."""
        if not (by.is_admin or by.manages_chat):
            raise UserError("chat_admins_only")
        parse_prompt("x " + flags)  # refuse bad flags now, not on every later request
        await self.store.set_chat_setting(by.platform, by.chat_id, CHAT_FLAGS_SETTING, flags.strip() or None)

    async def set_user_flags(self, flags: str, by: Origin) -> None:
        """One user's default flags, applied to each of their requests before the chat's defaults."""
        parse_prompt("x " + flags)
        await self.store.set_chat_setting(by.platform, _user_scope(by), CHAT_FLAGS_SETTING, flags.strip() or None)

    async def default_flags(self, origin: Origin) -> dict[str, str | None]:
        """The default flags that apply to `origin`: {"user": ..., "chat": ...} (None = not set)."""
        own = await self.store.chat_settings(origin.platform, _user_scope(origin))
        chat = await self.store.chat_settings(origin.platform, origin.chat_id) if origin.chat_id else {}
        return {"user": own.get(CHAT_FLAGS_SETTING), "chat": chat.get(CHAT_FLAGS_SETTING)}

    async def list_variants(self, origin: Origin | None = None) -> list[dict[str, Any]]:
        self.catalog.scan_if_due()
        default = await self.default_model(origin)
        loaded = getattr(self.executor, "loaded_models", lambda: {})()
        attached = {lora for loras in loaded.values() for lora in loras}
        out = []
        for entry in self.catalog.entries():
            spec = entry.spec
            out.append({
                "name": entry.name,
                "kind": spec.kind if spec else None,
                "base": spec.base if spec else None,
                "description": spec.description if spec else "",
                "status": "disabled" if entry.disabled else "broken" if entry.error else "ready",
                "error": entry.error,
                "loaded": entry.name in loaded or entry.name in attached,
                "default": entry.name == default,
                "defaults": _defaults_dict(spec.defaults) if spec else None,
            })
        return out

    async def reload_models(self, by: Origin) -> dict[str, list[str]]:
        _require_admin(by)
        changes = self.catalog.scan()
        summary = {"added": sorted(changes.added), "changed": sorted(changes.changed), "removed": sorted(changes.removed)}
        await self.store.audit(by.user_key, "reload_models", summary)
        return summary

    async def ban(self, user_key: str, reason: str, by: Origin) -> None:
        _require_admin(by)
        await self.store.ban(user_key, reason, by.user_key)
        await self.store.audit(by.user_key, "ban", {"user": user_key, "reason": reason})

    async def metrics(self) -> dict[str, Any]:
        counts = await self.store.counts_by_status()
        return {"jobs": counts, "queue_depth": counts.get(QUEUED, 0), **self.executor.metrics()}

    # --- the worker loop -----------------------------------------------------------------------------

    async def _work(self) -> None:
        idle = True
        while not self._stopping:
            queued = await self.store.queued()
            if not queued:
                idle = True
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=self.config.models.rescan_seconds or 2.0)
                except asyncio.TimeoutError:
                    pass
                continue
            if idle and self.config.queue.batch_window > 0:
                # Requests often come in bursts (a button pressed by several people, a script):
                # a moment's wait lets them share the first batch instead of queueing behind it.
                idle = False
                await asyncio.sleep(self.config.queue.batch_window)
                continue
            batch = self.scheduler.pick(queued, self.executor.loaded_model(), time.time())
            jobs = await self.store.claim([job.id for job in batch])
            if jobs:
                await self._run(jobs)

    async def _run(self, jobs: list[Job]) -> None:
        ids = tuple(job.id for job in jobs)
        self._running = _Running(ids, time.monotonic())
        by_id = {job.id: job for job in jobs}
        for job in jobs:
            self.events.publish({"type": "started", "job": job.id, "batch": list(ids)}, job.origin.platform)

        def on_progress(update: StepProgress) -> None:
            running = self._running
            if running is None or running.job_ids != ids:
                return
            running.step, running.total = update.step, update.total
            running.previews.update(update.previews)
            for job_id in ids:
                self.events.publish({"type": "progress", "job": job_id, "step": update.step, "total": update.total,
                                     "preview": job_id in update.previews}, by_id[job_id].origin.platform)

        try:
            outcomes = await self.executor.run([BatchItem(job.id, job.request) for job in jobs], on_progress,
                                               self._cancel_requested.__contains__, self.config.queue.job_timeout)
        except Exception as error:  # the executor itself broke: fail these jobs, keep serving
            log.exception("executor failed on jobs %s", ids)
            outcomes = [Outcome(job_id, error=f"generation failed: {error}", error_key="generation_failed",
                                error_params={"error": str(error)}) for job_id in ids]
        finally:
            self._running = None
        for outcome in outcomes:
            await self._record(by_id[outcome.job_id], outcome)
            self._cancel_requested.discard(outcome.job_id)
        await self._announce_positions()

    async def _record(self, job: Job, outcome: Outcome) -> None:
        platform = job.origin.platform
        if outcome.cancelled:
            await self.store.mark_cancelled(job.id)
            self.events.publish({"type": "cancelled", "job": job.id}, platform)
        elif outcome.error is not None:
            await self.store.fail(job.id, outcome.error, outcome.error_key, outcome.error_params)
            self.events.publish({"type": "failed", "job": job.id, "error": outcome.error,
                                 "error_key": outcome.error_key}, platform)
            log.warning("job %d failed: %s", job.id, outcome.error)
        else:
            await self.store.finish(job.id, outcome.images, outcome.grid)
            self.events.publish({"type": "done", "job": job.id, "images": [i.file for i in outcome.images],
                                 "grid": outcome.grid}, platform)
            log.info("job %d done: %d image(s)", job.id, len(outcome.images))

    async def _announce_positions(self) -> None:
        queued = await self.store.queued()
        for index, entry in enumerate(self.scheduler.order(queued), start=1):
            if self.events.watching(entry.id):
                platform = entry.user_key.split(":", 1)[0]
                self.events.publish({"type": "position", "job": entry.id, "position": index}, platform)


def _with_chat_defaults(user: RequestOptions, chat: RequestOptions) -> RequestOptions:
    """The chat's default flags fill in what the user did not say; the user's own size or aspect
    replaces the chat's size or aspect as a whole."""
    values = {name: getattr(user, name) if getattr(user, name) is not None else getattr(chat, name)
              for name in RequestOptions.__dataclass_fields__}
    if user.aspect is not None or user.width is not None or user.height is not None:
        values.update(aspect=user.aspect, width=user.width, height=user.height)
    return RequestOptions(**values)


def _user_scope(origin: Origin) -> str:
    return USER_SCOPE_PREFIX + origin.user_id


def _require_admin(origin: Origin) -> None:
    if not origin.is_admin:
        raise UserError("not_admin")


def _defaults_dict(defaults: VariantDefaults) -> dict[str, Any]:
    return {"width": defaults.width, "height": defaults.height, "steps": defaults.steps,
            "guidance": defaults.guidance, "scheduler": defaults.scheduler, "negative_prompt": defaults.negative_prompt}


def job_summary(job: Job) -> dict[str, Any]:
    """A JSON-friendly view of a job for APIs and logs."""
    return {
        "id": job.id, "status": job.status, "request": job.request.to_dict(),
        "user": job.origin.user_key, "attempts": job.attempts, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at,
        "images": [{"file": i.file, "seed": i.seed} for i in job.images], "grid": job.grid,
        "error": job.error, "error_key": job.error_key, "delivery": job.delivery,
    }

