"""Jobs: queue one, derive one from another (reroll, subtle or strong variation, remix, upscale), read,
cancel, its preview,
and the caller's history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import RedirectResponse, Response

from bot.core.derived import DERIVED_ACTIONS
from bot.frontends.web.deps import Caller, Locale, ServiceDep, Admitted
from bot.frontends.web.errors import error_response
from bot.frontends.web.schemas import DeriveIn, JobId, JobIn, job_json, submitted_json, view_json
from bot.frontends.web.strings import render

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one
DERIVED = DERIVED_ACTIONS


@router.post("/api/jobs", status_code=202)
async def submit(job: JobIn, service: ServiceDep, caller: Caller) -> dict[str, Any]:
    fields = job.model_dump(exclude={"prompt"}, exclude_none=True)
    return submitted_json(await service.submit(job.prompt, caller, **fields))


@router.post("/api/jobs/{job_id}/{action}", status_code=202)
async def derive(job_id: JobId, action: str, service: ServiceDep, caller: Caller,
                 body: DeriveIn | None = None) -> dict[str, Any]:
    """reroll (same settings, new seed); vary_subtle, vary_strong (or variation, the strong one),
    remix (a strong variation with the edited `prompt`) or upscale of image `index` (counted from 0)
    of one of the caller's own jobs: a job id someone shared lets one look, not take it over."""
    if action not in DERIVED:
        return error_response(404, render("api_unknown_action", caller.locale), "not_found")
    await service.owned_job(job_id, caller)
    index = body.index if body is not None else 0
    prompt = body.prompt if body is not None else None
    return submitted_json(await service.submit_derived(job_id, action, caller, index, prompt=prompt))


@router.get("/api/jobs/{job_id}")
async def get_job(job_id: JobId, service: ServiceDep, locale: Locale) -> dict[str, Any]:
    return view_json(await service.status(job_id), locale)


@router.delete("/api/jobs/{job_id}")
async def cancel(job_id: JobId, service: ServiceDep, caller: Caller) -> dict[str, Any]:
    status = await service.cancel(job_id, caller)
    return {"id": job_id, "status": status}


@router.get("/api/jobs/{job_id}/preview")
async def preview(job_id: JobId, service: ServiceDep, locale: Locale) -> Response:
    """The latest preview of a running job. Once the job has finished its previews are gone: a
    request still on its way then gets the first image of a finished job (303), or nothing (204),
    rather than an error."""
    job = await service.job(job_id)  # 404 for a job that does not exist
    data = service.preview(job.id)
    if data is None and job.status == "done" and job.images:
        return RedirectResponse(f"/api/images/{job.images[0].file}", status_code=303)
    if data is None and job.status in ("failed", "cancelled", "done"):
        return Response(status_code=204, headers={"Cache-Control": "no-store"})
    if data is None:
        return error_response(404, render("api_no_preview", locale), "no_preview")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})


@router.get("/api/history")
async def history(service: ServiceDep, caller: Caller, locale: Locale, limit: int = 20) -> dict[str, Any]:
    jobs = await service.history(caller, max(1, min(limit, 100)))
    return {"jobs": [job_json(job, locale) for job in jobs]}
