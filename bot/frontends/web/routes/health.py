"""For machines watching the bot: health (load balancers, container checks) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse

from bot import __version__
from bot.frontends.web.deps import ServiceDep
from bot.frontends.web.metrics import prometheus_text

router = APIRouter()


@router.get("/healthz")
async def healthz(service: ServiceDep) -> JSONResponse:
    """200 while jobs can be queued and run; 503 with the reasons while the worker is down or
    the database cannot be written (load balancers and container health checks read this)."""
    health = await service.health()
    body = {"status": "ok" if health.ok else "unavailable", "version": __version__,
            "queue_depth": len(service.waiting), "problems": list(health.problems)}
    return JSONResponse(body, status_code=200 if health.ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(service: ServiceDep) -> str:
    return prometheus_text(await service.metrics())
