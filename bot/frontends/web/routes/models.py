"""The models a caller may use, and the default."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from bot.frontends.web.deps import Caller, ConfigDep, SecretsDep, ServiceDep, Admitted

router = APIRouter(dependencies=[Admitted])  # signed-in callers where accounts are on; no banned one


@router.get("/api/models")
async def models(service: ServiceDep, caller: Caller, secrets: SecretsDep, config: ConfigDep) -> dict[str, Any]:
    # "admin" lets the page tell a locked admin tab from one the server has turned off, without
    # trying an admin call.
    return {"models": await service.list_variants(caller), "default": await service.default_model(),
            "admin": {"enabled": bool(secrets.admin_token) or config.web.auth == "password",
                      "unlocked": caller.is_admin}}
