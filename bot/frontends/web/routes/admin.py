"""Admin calls (`Authorization: Bearer $IMAGEBOT_ADMIN_TOKEN`): the default model, rescanning the
models, banning and unbanning users, the audit log of admin actions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bot.frontends.web.deps import Admin, ServiceDep, Admitted
from bot.frontends.web.schemas import BanIn, DefaultModelIn, UnbanIn

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one


@router.put("/api/models/default")
async def set_default(body: DefaultModelIn, service: ServiceDep, admin: Admin) -> dict[str, Any]:
    await service.set_default_variant("global", body.name, admin)
    return {"default": await service.default_model()}


@router.post("/api/models/reload")
async def reload_models(service: ServiceDep, admin: Admin) -> dict[str, Any]:
    return await service.reload_models(admin)


@router.post("/api/admin/ban")
async def ban(body: BanIn, service: ServiceDep, admin: Admin) -> dict[str, Any]:
    """Refuse the user's every later request; they are shown `reason`. `covers`: the other keys the
    ban holds for (an address ban: the address and the client keys seen from it)."""
    covered = await service.ban(body.user, body.reason, admin)
    return {"banned": body.user, "covers": covered[1:]}


@router.post("/api/admin/unban")
async def unban(body: UnbanIn, service: ServiceDep, admin: Admin) -> dict[str, Any]:
    lifted = await service.unban(body.user, admin)
    return {"unbanned": body.user, "covers": lifted[1:]}


@router.get("/api/audit")
async def audit(service: ServiceDep, admin: Admin, limit: int = 50) -> dict[str, Any]:
    """The latest admin actions, newest first."""
    return {"entries": await service.audit_log(admin, max(1, min(limit, 500)))}
