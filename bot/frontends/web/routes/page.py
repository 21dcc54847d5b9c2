"""The web page, and what it loads to start: its texts and what a request may contain. (Its
scripts and styles are the static files `create_app` mounts.)"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from bot.frontends.web.deps import ConfigDep, ServiceDep
from bot.frontends.web.strings import catalogue_for
from bot.models.variant import SCHEDULERS

router = APIRouter()
STATIC = Path(__file__).resolve().parents[1] / "static"


@router.get("/", include_in_schema=False)
async def index() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})


@router.get("/api/messages")
async def messages(locale: str | None = None) -> dict[str, str]:
    """Every user-facing text in one language (the browser's, English as the fallback)."""
    return catalogue_for(locale)


@router.get("/api/options")
async def options(config: ConfigDep, service: ServiceDep) -> dict[str, Any]:
    """What a request may contain: the limits and the scheduler names; and whether /describe has a
    captioning model to answer with (the page offers Describe only then)."""
    return {"limits": asdict(config.limits), "schedulers": list(SCHEDULERS),
            "describe": service.pictures.describer is not None}
