"""What the routes need, as FastAPI dependencies: the service and configuration `create_app` was
given, who is calling (an `Origin`), whether they are an admin, and their language.

Callers are told apart by the `X-Imagebot-User` header (the web page sends a random key it keeps)
or, without one, by address (bot/frontends/web/clients.py); admin calls carry
`Authorization: Bearer $IMAGEBOT_ADMIN_TOKEN`. The headers are read from the request, not declared
as parameters, so the API schema stays what clients already know.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from bot.config import Config, Secrets
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.core.service import Service
from bot.frontends.web.clients import client_address, client_key


def get_service(request: Request) -> Service:
    return request.app.state.service


def get_config(request: Request) -> Config:
    return request.app.state.config


def get_secrets(request: Request) -> Secrets:
    return request.app.state.secrets


def get_locale(request: Request) -> str | None:
    """The caller's languages (Accept-Language), for the texts of the answer."""
    return request.headers.get("accept-language")


def get_address(request: Request) -> str:
    """The client's network address (through trusted proxies: see [web] trusted_proxies)."""
    return client_address(request, request.app.state.trusted_proxies)


def get_caller(request: Request, secrets: Annotated[Secrets, Depends(get_secrets)],
               address: Annotated[str, Depends(get_address)]) -> Origin:
    """Who is calling: their client key, else their address; 400 for a malformed key."""
    token = _bearer(request)
    return Origin(platform="web", user_id=client_key(request, address), chat_id="web", locale=get_locale(request),
                  is_admin=token is not None and _is_admin_token(token, secrets), address=address)


def get_admin(request: Request, caller: Annotated[Origin, Depends(get_caller)],
              secrets: Annotated[Secrets, Depends(get_secrets)]) -> Origin:
    """The caller as an admin, or a refusal: 403 when the admin API is off, 401 without a token,
    403 with a wrong one, 429 after too many wrong or missing tokens from the address."""
    if not secrets.admin_token:
        raise UserError("admin_api_disabled")
    failures = request.app.state.admin_failures
    failures.check(caller.address)
    if _bearer(request) is None:
        failures.failed(caller.address)
        raise UserError("admin_token_missing")
    if not caller.is_admin:
        failures.failed(caller.address)
        raise UserError("not_admin")
    return caller


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else None


def _is_admin_token(token: str, secrets: Secrets) -> bool:
    # Compared in constant time: how long a wrong guess takes says nothing about the token.
    return bool(secrets.admin_token) and hmac.compare_digest(token.encode(), secrets.admin_token.encode())


ServiceDep = Annotated[Service, Depends(get_service)]
ConfigDep = Annotated[Config, Depends(get_config)]
SecretsDep = Annotated[Secrets, Depends(get_secrets)]
Locale = Annotated[str | None, Depends(get_locale)]
Address = Annotated[str, Depends(get_address)]
Caller = Annotated[Origin, Depends(get_caller)]
Admin = Annotated[Origin, Depends(get_admin)]
