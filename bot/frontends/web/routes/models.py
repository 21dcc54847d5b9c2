"""The models a caller may use, and the default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bot.frontends.web.deps import Caller, ServiceDep

router = APIRouter()


@router.get("/api/models")
async def models(service: ServiceDep, caller: Caller) -> dict[str, Any]:
    return {"models": await service.list_variants(caller), "default": await service.default_model()}
