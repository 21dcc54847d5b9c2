"""A job's events as server-sent events: its state first, then each change until it finishes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from bot.core.jobs import FINISHED
from bot.frontends.web.deps import Caller, Locale, ServiceDep, Admitted
from bot.frontends.web.schemas import JobId, job_json, view_json

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one
KEEPALIVE_SECONDS = 15.0  # a comment line this often keeps proxies from closing a quiet stream
ENDINGS = ("done", "failed", "cancelled")


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
            while True:
                try:
                    event = await updates.next(KEEPALIVE_SECONDS)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event["type"] in ENDINGS:
                    yield sse(event["type"], job_json(await service.job(job.id), locale))
                    return
                event = {**event, "job": job_id}  # the core's events name internal ids; callers know the public one
                event.pop("batch", None)  # the other jobs of the batch: their ids are not the caller's to know
                if event["type"] == "progress" and event.get("preview"):
                    event = {**event, "preview_url": f"/api/jobs/{job_id}/preview?step={event['step']}"}
                yield sse(event["type"], event)
        finally:
            updates.close()
            slots.release(caller.user_id, caller.address)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


def sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
