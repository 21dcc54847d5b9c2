"""The HTTP API of `imagebot serve` (the web page's back end, usable by any client).

A thin adapter: JSON in -> `service.submit()` and friends -> JSON out. The routes live in
bot/frontends/web/routes/, one module per concern; this module only wires them up with what they
share: the service, the configuration and the secrets (read by bot/frontends/web/deps.py), the
error answers, the security checks and headers, the body size limit, the per-client limits and the
page's static files. With `[a1111] enabled`, the AUTOMATIC1111-compatible API (`/sdapi/v1/...`,
bot/frontends/web/routes/a1111.py) is served beside it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from bot import __version__
from bot.config import Config, Secrets
from bot.core.service import Service
from bot.frontends.web.a1111 import IMG2IMG_PATH, img2img_body_limit
from bot.frontends.web.basic_auth import VerifiedCredentials
from bot.frontends.web.body_limit import BodyLimit
from bot.frontends.web.clients import trusted_networks
from bot.frontends.web.errors import add_error_handlers
from bot.frontends.web.limits import FailureLimit, StreamSlots
from bot.frontends.web.routes import ROUTERS, a1111
from bot.frontends.web.security import IMAGE_BODY_PATHS, Security

STATIC = Path(__file__).resolve().parent / "static"


def create_app(service: Service, config: Config, secrets: Secrets) -> FastAPI:
    # The interactive docs pages load their scripts from a CDN; the schema itself is served.
    app = FastAPI(title="Image Chatbot API", version=__version__, docs_url=None, redoc_url=None,
                  description="Queue image generations and follow them. Errors carry a message fit to show a user.")
    app.state.service = service
    app.state.config = config
    app.state.secrets = secrets
    app.state.trusted_proxies = trusted_networks(config.web)
    app.state.streams = StreamSlots(config.web.max_streams_per_client, config.web.max_streams,
                                   config.web.max_streams_per_address)
    app.state.admin_failures = FailureLimit()
    app.state.sign_in_failures = FailureLimit(refusal="api_too_many_sign_in_failures")
    app.state.basic_verified = VerifiedCredentials()  # HTTP Basic auth of AUTOMATIC1111-style clients
    larger = {path: config.limits.max_upload_bytes for path in IMAGE_BODY_PATHS}
    if config.a1111.enabled:
        larger[IMG2IMG_PATH] = img2img_body_limit(config.limits.max_upload_bytes)
    app.add_middleware(BodyLimit, larger=larger)
    app.add_middleware(Security, web=config.web)  # added last: outermost, so every answer has its headers
    add_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if config.a1111.enabled:
        app.include_router(a1111.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
