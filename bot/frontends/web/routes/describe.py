"""/describe: prompts suggested for a picture (the image file as the body, or `?image=HANDLE` of an
upload), from the captioning model in `[describe] model`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bot.frontends.web.deps import Caller, ServiceDep, SignedIn

router = APIRouter(dependencies=[SignedIn])  # with [web] auth = "password": signed-in callers only


@router.post("/api/describe")
async def describe(request: Request, service: ServiceDep, caller: Caller, image: str | None = None) -> dict[str, Any]:
    prompts = await service.describe(image if image is not None else await request.body(), caller)
    return {"prompts": prompts}
