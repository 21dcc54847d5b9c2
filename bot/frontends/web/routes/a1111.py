"""The AUTOMATIC1111-compatible API (`[a1111] enabled`): the part of its `/sdapi/v1/...` that image
tools call (Open WebUI, SillyTavern, the webuiapi client), over the same queue as every frontend.

A txt2img or img2img call queues a job like POST /api/jobs does (the same limits, quotas, bans and
fair place in line), then waits for it and answers with its images, as A1111 answers when the
picture is made. A caller that hangs up meanwhile leaves the job running, as A1111 does; it stays
in the caller's history (GET /api/history). /progress and /interrupt concern the caller's own
current job only. Translation both ways: bot/frontends/web/a1111.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from bot.core.errors import UserError
from bot.core.jobs import FAILED, Origin
from bot.core.service import Service, Submitted
from bot.frontends.text import job_error
from bot.frontends.web.a1111 import (
    SCHEDULES, Img2ImgIn, Txt2ImgIn, checkpoint_name, current_job, generation_json, img2img_fields,
    loras_json, options_json, progress_json, read_pictures, request_fields, samplers_json, sd_models_json)
from bot.frontends.web.deps import ApiCaller, ConfigDep, ServiceDep, get_api_caller
from bot.frontends.web.errors import a1111_error
from bot.frontends.web.schemas import without_paths

router = APIRouter(prefix="/sdapi/v1", dependencies=[Depends(get_api_caller)])  # the caller, or 401


@router.post("/txt2img")
async def txt2img(body: Txt2ImgIn, service: ServiceDep, caller: ApiCaller, config: ConfigDep) -> Any:
    submitted = await service.submit(body.prompt or "", caller, **request_fields(body, config.limits))
    return await _finished(service, submitted, body, caller)


@router.post("/img2img")
async def img2img(body: Img2ImgIn, service: ServiceDep, caller: ApiCaller, config: ConfigDep) -> Any:
    fields = request_fields(body, config.limits)
    submitted = await service.submit(body.prompt or "", caller, **img2img_fields(body), **fields)
    return await _finished(service, submitted, body, caller)


async def _finished(service: Service, submitted: Submitted, body: Txt2ImgIn, caller: Origin) -> Any:
    job = await service.wait_finished(submitted.job_id)
    if job.status == FAILED:
        return a1111_error(500, without_paths(job_error(job, caller.locale)) or "",
                           job.error_key or "generation_failed", kind="GenerationError")
    pictures = await asyncio.to_thread(read_pictures, service.config.storage.outputs_path(), job)
    return generation_json(job, pictures, body)


@router.get("/progress")
async def progress(service: ServiceDep, caller: ApiCaller, skip_current_image: bool = False) -> dict[str, Any]:
    views = await service.queue_of(caller)
    current = current_job(views)
    preview = None if current is None or skip_current_image else service.preview(current.job.id)
    return progress_json(current, len(views), preview, caller.locale)


@router.post("/interrupt")
async def interrupt(service: ServiceDep, caller: ApiCaller) -> dict[str, Any]:
    """Stop the caller's current job (the one /progress shows); never anyone else's."""
    current = current_job(await service.queue_of(caller))
    if current is not None:
        try:
            await service.cancel(current.job.id, caller)
        except UserError as error:
            if error.key != "already_finished":  # it ended meanwhile: nothing left to stop
                raise
    return {}


@router.get("/sd-models")
async def sd_models(service: ServiceDep, caller: ApiCaller) -> list[dict[str, Any]]:
    return sd_models_json(await service.list_variants(caller))


@router.get("/loras")
async def loras(service: ServiceDep, caller: ApiCaller) -> list[dict[str, Any]]:
    return loras_json(await service.list_variants(caller))


@router.get("/options")
async def get_options(service: ServiceDep, caller: ApiCaller) -> dict[str, Any]:
    return options_json(await service.default_model(caller))


@router.post("/options")
async def set_options(body: dict[str, Any], service: ServiceDep, caller: ApiCaller) -> JSONResponse:
    """Only `sd_model_checkpoint` is read: a new one switches the default model, which is an
    admin's to do (403 for anyone else); sending back the one in use changes nothing. Other
    settings are A1111's own and are ignored."""
    wanted = checkpoint_name(body.get("sd_model_checkpoint"))
    if wanted is not None and wanted != await service.default_model(caller):
        await service.set_default_variant("global", wanted, caller)
    return JSONResponse(None)


@router.get("/samplers")
async def samplers() -> list[dict[str, Any]]:
    return samplers_json()


@router.get("/schedulers")
async def schedulers() -> list[dict[str, Any]]:
    return list(SCHEDULES)


# What clients list before they draw, of features this server has none of: empty, as on an A1111
# without them, so the client shows nothing to choose rather than an error.
@router.get("/upscalers")
async def upscalers() -> list[dict[str, Any]]:
    return [{"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4}]


@router.get("/latent-upscale-modes")
@router.get("/sd-vae")
async def none_of_these() -> list[dict[str, Any]]:
    return []


@router.get("/scripts")
async def scripts() -> dict[str, list[str]]:
    return {"txt2img": [], "img2img": []}
