"""Job events as server-sent events: one job's (its state first, then each change until it
finishes), or every job of the caller's on one stream (the web page's)."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from bot.core.errors import UserError
from bot.core.events import Subscription
from bot.core.jobs import FINISHED
from bot.frontends.web.deps import Caller, Locale, ServiceDep, Admitted
from bot.frontends.web.schemas import JobId, job_json, view_json

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one
KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
KEEPALIVE = ": keep-alive\n\n"
ENDINGS = ("done", "failed", "cancelled")
RESUME_MARGIN_SECONDS = 10.0  # jobs that finished this long before the last event seen are told again
RETRY_MS = 3000  # how long an EventSource waits before it reconnects


@router.get("/api/jobs/{job_id}/events")
async def events(job_id: JobId, request: Request, service: ServiceDep, caller: Caller,
                 locale: Locale) -> StreamingResponse:
    """Anyone holding the job's id may follow it. Each stream holds a slot of the caller's (their
    key, or their address: EventSource sends no headers of ours) and of their address until it
    ends; 429 beyond."""
    job = await service.job(job_id)  # 404 before the stream starts
    slots = request.app.state.streams
    slots.acquire(caller.user_id, caller.address)  # 429 when the caller or their address has too many open
    updates = service.subscribe(job.id)  # before reading the state: nothing falls in between
    try:
        view = await service.status(job.id)
    except BaseException:
        updates.close()
        slots.release(caller.user_id, caller.address)
        raise

    async def stream():
        try:
            yield sse("state", view_json(view, locale))
            if view.job.status in FINISHED:
                return
            async for event in kept_alive(updates):
                if event is None:
                    yield KEEPALIVE
                    continue
                if event["type"] in ENDINGS:
                    yield sse(event["type"], job_json(await service.job(job.id), locale))
                    return
                yield sse(event["type"], public_event(event, job_id))
        finally:
            updates.close()
            slots.release(caller.user_id, caller.address)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


@router.get("/api/events")
async def caller_events(request: Request, service: ServiceDep, caller: Caller, locale: Locale) -> StreamingResponse:
    """Every job of the caller's (their account, else their client key, else their address: the
    identity every route uses), on one stream: first the state of each unfinished job, then each
    event of any of them, new ones included. Only the caller's own jobs are ever on it. Each event
    has an id; a client that reconnects with `Last-Event-ID` is sent the state of its unfinished
    jobs again and of those that finished meanwhile, so it misses nothing. The stream holds one
    slot as `/api/jobs/{id}/events` does; 429 beyond."""
    slots = request.app.state.streams
    slots.acquire(caller.user_id, caller.address)
    updates = service.subscribe(user=caller.user_key)  # before reading the states: nothing falls in between
    try:
        since = resumed_from(request.headers.get("last-event-id"))
        finished = await service.finished_since(caller, since - RESUME_MARGIN_SECONDS) if since else []
        unfinished = sorted(await service.queue_of(caller), key=lambda view: view.job.id)
        snapshot = [job_json(job, locale) for job in finished] + [view_json(view, locale) for view in unfinished]
        public = {view.job.id: view.job.public_id for view in unfinished}  # internal id -> public id
    except BaseException:
        updates.close()
        slots.release(caller.user_id, caller.address)
        raise
    numbers = itertools.count(1)

    def event_id() -> str:
        # when it was sent (milliseconds) and its number on this stream: a resumed stream starts from the time
        return f"{int(time.time() * 1000)}-{next(numbers)}"

    async def stream():
        try:
            yield f"retry: {RETRY_MS}\n\n"
            for data in snapshot:
                yield sse("state", data, event_id())
            async for event in kept_alive(updates):
                if event is None:
                    yield KEEPALIVE
                    continue
                job_id = public.get(event["job"])
                if job_id is None or event["type"] in ENDINGS:
                    try:
                        job = await service.job(event["job"])
                    except UserError:  # deleted meanwhile
                        continue
                    job_id = public[job.id] = job.public_id
                    if event["type"] in ENDINGS:
                        public.pop(job.id, None)
                        yield sse(event["type"], job_json(job, locale), event_id())
                        continue
                yield sse(event["type"], public_event(event, job_id), event_id())
        finally:
            updates.close()
            slots.release(caller.user_id, caller.address)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def kept_alive(updates: Subscription) -> AsyncIterator[dict[str, Any] | None]:
    """The subscription's events, and None after each KEEPALIVE_SECONDS without one (the stream
    then sends a comment line, which keeps proxies from closing a quiet stream)."""
    while True:
        try:
            yield await updates.next(KEEPALIVE_SECONDS)
        except asyncio.TimeoutError:
            yield None


def resumed_from(last_event_id: str | None) -> float | None:
    """When the event a reconnecting client saw last was sent (seconds), from its id; None for a
    first connection or an id this server did not make."""
    stamp = (last_event_id or "").split("-", 1)[0]
    if not stamp.isdigit() or len(stamp) > 15:
        return None
    return min(int(stamp) / 1000, time.time())


def public_event(event: dict[str, Any], job_id: str) -> dict[str, Any]:
    """A core event as callers see it: the job by its public id (the core's events name internal
    ids), no other job of its batch (their ids are not the caller's to know), a preview's URL."""
    event = {**event, "job": job_id}
    event.pop("batch", None)
    if event["type"] == "progress" and event.get("preview"):
        event["preview_url"] = f"/api/jobs/{job_id}/preview?step={event['step']}"
    return event


def sse(event: str, data: dict[str, Any], event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
