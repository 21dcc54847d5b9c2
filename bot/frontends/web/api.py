"""The HTTP API of `imagebot serve` (the web page's back end, usable by any client).

A thin adapter: JSON in -> `service.submit()` and friends -> JSON out. Users of the API are told
apart by the `X-Imagebot-User` header (the web page sends a random id it keeps); admin calls carry
`Authorization: Bearer $IMAGEBOT_ADMIN_TOKEN`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from bot import __version__
from bot.config import Config, Secrets
from bot.core.errors import UserError
from bot.core.jobs import FINISHED, Job, Origin
from bot.core.messages import catalogue_for
from bot.core.request import SCHEDULERS
from bot.core.service import Service
from bot.frontends.web.metrics import prometheus_text

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 64 * 1024
IMAGE_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}\.png$")
USER_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SSE_KEEPALIVE_SECONDS = 15.0

# UserError keys that are not "bad input" (400) but something else.
_STATUS_BY_KEY = {
    "job_not_found": 404,
    "not_your_job": 403,
    "not_admin": 403,
    "admin_api_disabled": 403,
    "admin_token_missing": 401,
    "banned": 403,
    "queue_full": 429,
    "rate_limited": 429,
    "shutting_down": 503,
    "storage_unavailable": 503,
    "storage_full": 507,  # Insufficient Storage: the disk (or the database's size limit) is full
}

# Strict: JSON true/false must not pass as 1/0; strings go through the same parser as chat flags.
Scalar = StrictInt | StrictFloat | StrictStr | None
JobId = int  # any integer; ids that cannot exist are simply not found


class JobIn(BaseModel):
    """A generation request. `prompt` may carry inline flags (`--ar 16:9 --seed 42 ...`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=20_000)
    negative_prompt: str | None = Field(default=None, max_length=20_000)
    model: str | None = None
    seed: Scalar = None
    steps: Scalar = None
    guidance: Scalar = None
    width: Scalar = None
    height: Scalar = None
    size: str | None = None
    aspect: str | None = None
    count: Scalar = None
    scheduler: str | None = None


class DeriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(default=0, ge=0, le=63)


class DefaultModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    scope: Literal["global"] = "global"  # per-chat defaults are set from the chat frontends


def create_app(service: Service, config: Config, secrets: Secrets) -> FastAPI:
    # The interactive docs pages load their scripts from a CDN; the schema itself is served.
    app = FastAPI(title="Image Chatbot API", version=__version__, docs_url=None, redoc_url=None,
                  description="Queue image generations and follow them. Errors carry a message fit to show a user.")
    outputs = config.storage.outputs_path().resolve()

    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        key = "not_found" if error.status_code == 404 else "http_error"
        return _error(error.status_code, "Not found." if error.status_code == 404 else str(error.detail), key)

    @app.exception_handler(UserError)
    async def user_error(request: Request, error: UserError):
        locale = request.headers.get("accept-language")
        return _error(_STATUS_BY_KEY.get(error.key, 400), error.render(locale), error.key)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        problems = []
        for item in error.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return _error(422, "Invalid request: " + "; ".join(problems), "invalid_request")

    # --- jobs ------------------------------------------------------------------------------------

    @app.post("/api/jobs", status_code=202)
    async def submit(job: JobIn, request: Request) -> dict[str, Any]:
        fields = job.model_dump(exclude={"prompt"}, exclude_none=True)
        submitted = await service.submit(job.prompt, _origin(request, secrets), **fields)
        return {"id": submitted.job_id, "position": submitted.position, "eta": submitted.eta_seconds,
                "request": submitted.request.to_dict()}

    @app.post("/api/jobs/{job_id}/{action}", status_code=202)
    async def derive(job_id: JobId, action: str, request: Request, body: DeriveIn | None = None) -> dict[str, Any]:
        """reroll (same settings, new seed), variation or upscale (of image `index`, counted from 0)."""
        if action not in ("reroll", "variation", "upscale"):
            return _error(404, "Unknown action; use reroll, variation or upscale.", "not_found")
        index = body.index if body is not None else 0
        submitted = await service.submit_derived(job_id, action, _origin(request, secrets), index)
        return {"id": submitted.job_id, "position": submitted.position, "eta": submitted.eta_seconds,
                "request": submitted.request.to_dict()}

    @app.get("/api/jobs/{job_id}")
    async def get_job(job_id: JobId, request: Request) -> dict[str, Any]:
        view = await service.status(job_id)
        return _job_json(view.job, request, position=view.position, eta=view.eta_seconds, step=view.step,
                         total=view.total)

    @app.delete("/api/jobs/{job_id}")
    async def cancel(job_id: JobId, request: Request) -> dict[str, Any]:
        status = await service.cancel(job_id, _origin(request, secrets))
        return {"id": job_id, "status": status}

    @app.get("/api/jobs/{job_id}/preview")
    async def preview(job_id: JobId) -> Response:
        await service.job(job_id)
        data = service.preview(job_id)
        if data is None:
            return _error(404, "No preview yet.", "no_preview")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/api/jobs/{job_id}/events")
    async def events(job_id: JobId, request: Request) -> StreamingResponse:
        await service.job(job_id)  # 404 before the stream starts
        updates = service.subscribe(job_id)  # before reading the state: nothing falls in between
        try:
            view = await service.status(job_id)
        except BaseException:
            updates.close()
            raise

        async def stream():
            try:
                first = _job_json(view.job, request, position=view.position, eta=view.eta_seconds,
                                  step=view.step, total=view.total)
                yield _sse("state", first)
                if view.job.status in FINISHED:
                    return
                while True:
                    try:
                        event = await updates.next(SSE_KEEPALIVE_SECONDS)
                    except asyncio.TimeoutError:
                        yield ": keep-alive\n\n"
                        continue
                    if event["type"] in ("done", "failed", "cancelled"):
                        job = await service.job(job_id)
                        yield _sse(event["type"], _job_json(job, request))
                        return
                    if event["type"] == "progress" and event.get("preview"):
                        event = {**event, "preview_url": f"/api/jobs/{job_id}/preview?step={event['step']}"}
                    yield _sse(event["type"], event)
            finally:
                updates.close()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/api/history")
    async def history(request: Request, limit: int = 20) -> dict[str, Any]:
        jobs = await service.history(_origin(request, secrets), max(1, min(limit, 100)))
        return {"jobs": [_job_json(job, request) for job in jobs]}

    # --- models ---------------------------------------------------------------------------------

    @app.get("/api/models")
    async def models(request: Request) -> dict[str, Any]:
        return {"models": await service.list_variants(_origin(request, secrets)),
                "default": await service.default_model(),
                "admin": {"enabled": bool(secrets.admin_token), "unlocked": _is_admin(request, secrets)}}

    @app.put("/api/models/default")
    async def set_default(body: DefaultModelIn, request: Request) -> dict[str, Any]:
        by = _admin(request, secrets)
        await service.set_default_variant("global", body.name, by)
        return {"default": await service.default_model()}

    @app.post("/api/models/reload")
    async def reload_models(request: Request) -> dict[str, Any]:
        return await service.reload_models(_admin(request, secrets))

    # --- files and health --------------------------------------------------------------------------

    @app.get("/api/images/{file}")
    async def image(file: str) -> Response:
        path = image_path(outputs, file)
        if path is None:
            return _error(404, "No such image.", "not_found")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "public, max-age=31536000, immutable"})

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/api/messages")
    async def messages(locale: str | None = None) -> dict[str, str]:
        """Every user-facing text in one language (the browser's, English as the fallback)."""
        return catalogue_for(locale)

    @app.get("/api/options")
    async def options() -> dict[str, Any]:
        """What a request may contain: the limits and the scheduler names."""
        return {"limits": asdict(config.limits), "schedulers": list(SCHEDULERS)}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while jobs can be queued and run; 503 with the reasons while the worker is down or
        the database cannot be written (load balancers and container health checks read this)."""
        health = await service.health()
        body = {"status": "ok" if health.ok else "unavailable", "version": __version__,
                "queue_depth": len(service.waiting), "problems": list(health.problems)}
        return JSONResponse(body, status_code=200 if health.ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        return prometheus_text(await service.metrics())

    return app


class BodyLimit:
    """Refuse request bodies over `limit` bytes, declared (Content-Length) or streamed (chunked).

    The body is read here first (it is small by definition) and handed on whole, so an oversized
    one is refused before the application parses anything.
    """

    def __init__(self, app, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await self._refuse(scope, receive, send)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await self._refuse(scope, receive, send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # afterwards: disconnect notices (server-sent events)

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send) -> None:
        response = _error(413, f"The request body is larger than {self.limit // 1024} KiB.", "too_large")
        await response(scope, receive, send)


def _origin(request: Request, secrets: Secrets) -> Origin:
    user = request.headers.get("x-imagebot-user", "")
    if not USER_ID.fullmatch(user):
        host = request.client.host if request.client else "unknown"
        user = f"anonymous-{host}"
    return Origin(platform="web", user_id=user, chat_id="web", locale=request.headers.get("accept-language"),
                  is_admin=_is_admin(request, secrets))


def _is_admin(request: Request, secrets: Secrets) -> bool:
    header = request.headers.get("authorization", "")
    if not secrets.admin_token or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), secrets.admin_token.encode())


def _admin(request: Request, secrets: Secrets) -> Origin:
    """The caller as an admin, or an HTTP error: 403 when admin is off, 401 without a token, 403 when wrong."""
    if not secrets.admin_token:
        raise UserError("admin_api_disabled")
    if not request.headers.get("authorization", "").lower().startswith("bearer "):
        raise UserError("admin_token_missing")
    origin = _origin(request, secrets)
    if not origin.is_admin:
        raise UserError("not_admin")
    return origin


def _job_json(job: Job, request: Request, *, position: int | None = None, eta: float | None = None,
              step: int | None = None, total: int | None = None) -> dict[str, Any]:
    locale = request.headers.get("accept-language")
    error = UserError(job.error_key, **job.error_params).render(locale) if _renderable(job) else job.error
    return {
        "id": job.id,
        "status": job.status,
        "position": position,
        "eta": eta,
        "progress": {"step": step, "total": total} if step is not None else None,
        "error": error,
        "request": job.request.to_dict(),
        "images": [{"url": f"/api/images/{image.file}", "seed": image.seed} for image in job.images],
        "grid": f"/api/images/{job.grid}" if job.grid else None,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def _renderable(job: Job) -> bool:
    from bot.core.messages import CATALOGUE

    return bool(job.error_key) and job.error_key in CATALOGUE["en"]


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(status: int, message: str, key: str) -> JSONResponse:
    return JSONResponse({"error": message, "key": key}, status_code=status)


def image_path(outputs: Path, file: str) -> Path | None:
    """The file in the outputs folder that an /api/images/ URL names, or None."""
    if not IMAGE_FILE.fullmatch(file):
        return None
    path = (outputs.resolve() / file).resolve()
    return path if path.is_relative_to(outputs.resolve()) and path.is_file() else None
