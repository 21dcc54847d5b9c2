"""/describe: prompts suggested for a picture (the image file as the body, or `?image=HANDLE` of an
upload), from the captioning model in `[describe] model`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bot.frontends.web.deps import Caller, ServiceDep, Admitted

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one


@router.post("/api/describe")
async def describe(request: Request, service: ServiceDep, caller: Caller, image: str | None = None) -> dict[str, Any]:
    prompts = await service.describe(image if image is not None else await request.body(), caller)
    return {"prompts": prompts}
