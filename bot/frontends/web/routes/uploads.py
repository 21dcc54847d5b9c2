"""Image uploads: the bytes of an image prompt or a mask, answered with a handle that
`POST /api/jobs` takes as `image` or `mask`. The body is the file itself (any image Content-Type),
so no form parser stands between a stranger's bytes and the checks in bot/core/uploads.py."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from bot.frontends.web.deps import Caller, ServiceDep, Admitted

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one


@router.post("/api/uploads", status_code=201)
async def upload(request: Request, service: ServiceDep, caller: Caller, kind: str = "image") -> dict[str, Any]:
    """`?kind=mask` for a mask (kept as grey levels). The handle is random: whoever holds it may use
    it. 429 past the caller's or their address's share of waiting uploads ([limits])."""
    what = "mask" if kind == "mask" else "image"
    handle = await service.upload(await request.body(), caller, what)
    width, height = service.uploads.size_of(service.uploads.find(handle, what))
    return {"handle": handle, "kind": what, "width": width, "height": height}
