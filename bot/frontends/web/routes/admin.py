"""Admin calls (`Authorization: Bearer $IMAGEBOT_ADMIN_TOKEN`): the default model, rescanning the models."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bot.frontends.web.deps import Admin, ServiceDep
from bot.frontends.web.schemas import DefaultModelIn

router = APIRouter()


@router.put("/api/models/default")
async def set_default(body: DefaultModelIn, service: ServiceDep, admin: Admin) -> dict[str, Any]:
    await service.set_default_variant("global", body.name, admin)
    return {"default": await service.default_model()}


@router.post("/api/models/reload")
async def reload_models(service: ServiceDep, admin: Admin) -> dict[str, Any]:
    return await service.reload_models(admin)
