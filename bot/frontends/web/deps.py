"""What the routes need, as FastAPI dependencies: the service and configuration `create_app` was
given, who is calling (an `Origin`), whether they are an admin, and their language.

Callers are told apart by the `X-Imagebot-User` header (the web page sends a random key it keeps)
or, without one, by address (bot/frontends/web/clients.py); admin calls carry
`Authorization: Bearer $IMAGEBOT_ADMIN_TOKEN`. With `[web] auth = "password"` a caller is their
account instead (the session cookie, bot/frontends/web/routes/session.py), and only signed-in
callers, or ones with the admin token, get past `require_admitted`; callers of the
AUTOMATIC1111-compatible API may sign in with HTTP Basic auth instead (`get_api_caller`). The
headers are read from the request, not declared as parameters, so the API schema stays what
clients already know.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from fastapi import Depends, Request

from bot.config import Config, Secrets
from bot.core.accounts import Account
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.core.service import Service
from bot.frontends.web.basic_auth import basic_credentials
from bot.frontends.web.clients import client_address, client_key

log = logging.getLogger(__name__)
T = TypeVar("T")


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


SESSION_COOKIE = "imagebot_session"


async def get_account(request: Request) -> Account | None:
    """The signed-in account ([web] auth = "password"), from the session cookie; None without one."""
    if request.app.state.config.web.auth != "password":
        return None
    token = request.cookies.get(SESSION_COOKIE)
    return await get_service(request).accounts.account_of(token) if token else None


async def password_checked(request: Request, address: str, name: str, how: str,
                           check: Callable[[], Awaitable[T | None]]) -> T:
    """Run a password `check` (None: wrong name or password) as one counted try of the address:
    429 once the address has used up its failures, 401 and a log line for a wrong pair. The try
    counts before the slow hash is computed, so a burst sent at once cannot outrun the limit."""
    failures = request.app.state.sign_in_failures
    mark = failures.attempt(address)
    result = await check()
    if result is None:
        log.warning("failed sign-in (%s) as %r from %s", how, name[:64], address)
        raise UserError("sign_in_failed")
    failures.succeeded(address, mark)
    return result


def get_token_admin(request: Request, secrets: Annotated[Secrets, Depends(get_secrets)],
                    address: Annotated[str, Depends(get_address)]) -> bool:
    """Whether the call carries the admin token. A wrong one counts against the address (429
    beyond the limit), on whatever route it is tried. The right one always works: others sharing
    the admin's address (a LAN behind one router) cannot lock the admin out. That leaves guessing
    unslowed only for whoever could guess a token of 16 or more random characters anyway
    (`serve` refuses a shorter one)."""
    token = _bearer(request)
    if token is None or not secrets.admin_token:
        return False
    if _is_admin_token(token, secrets):
        return True
    failures = request.app.state.admin_failures
    failures.check(address)
    failures.failed(address)
    log.warning("wrong admin token from %s", address)
    return False


async def require_admitted(request: Request, address: Annotated[str, Depends(get_address)],
                           account: Annotated[Account | None, Depends(get_account)],
                           token_admin: Annotated[bool, Depends(get_token_admin)]) -> None:
    """The door of every API router: with [web] auth = "password", 401 for a caller that is neither
    signed in nor holds the admin token; 403 for a banned caller (their account, client key or
    address), on every route, even those that need no identity (a job read by its id)."""
    if request.app.state.config.web.auth == "password" and account is None and not token_admin:
        raise UserError("sign_in_required")
    if not token_admin:
        # A malformed key is refused where the caller is needed (get_caller); here it is no key.
        user_id = account.user_id if account else client_key(request, address, refuse_malformed=False)
        get_service(request).bans.check(Origin(platform="web", user_id=user_id, address=address,
                                               is_admin=bool(account and account.is_admin)))


async def get_caller(request: Request, address: Annotated[str, Depends(get_address)],
                     account: Annotated[Account | None, Depends(get_account)],
                     token_admin: Annotated[bool, Depends(get_token_admin)],
                     _: Annotated[None, Depends(require_admitted)]) -> Origin:
    """Who is calling: their account, else their client key, else their address; 400 for a
    malformed key (banned callers were turned away by `require_admitted`)."""
    return _origin(request, address, account, token_admin)


async def get_basic_account(request: Request, address: Annotated[str, Depends(get_address)]) -> Account | None:
    """With [web] auth = "password", the account whose name and password came as HTTP Basic auth
    (how AUTOMATIC1111's API clients sign in); None without them. Wrong ones: 401, counted against
    the address like failed sign-ins (429 beyond the limit)."""
    credentials = basic_credentials(request)
    if request.app.state.config.web.auth != "password" or credentials is None:
        return None
    accounts = get_service(request).accounts
    verified = request.app.state.basic_verified
    known = verified.known(*credentials)
    if known is not None:
        account = await accounts.get(known[0])
        if account is not None and account.created_at == known[1]:
            return account
    account = await password_checked(request, address, credentials[0], "HTTP Basic",
                                     lambda: accounts.verify(*credentials))
    verified.remember(*credentials, account.name, account.created_at)
    return account


async def get_api_caller(request: Request, address: Annotated[str, Depends(get_address)],
                         basic: Annotated[Account | None, Depends(get_basic_account)],
                         account: Annotated[Account | None, Depends(get_account)],
                         token_admin: Annotated[bool, Depends(get_token_admin)]) -> Origin:
    """The caller of the AUTOMATIC1111-compatible API: as `get_caller`, and with [web] auth =
    "password" also an account signed in by HTTP Basic auth; 401 for a caller with neither an
    account nor the admin token."""
    account = basic or account
    if request.app.state.config.web.auth == "password" and account is None and not token_admin:
        raise UserError("a1111_sign_in_required")
    caller = _origin(request, address, account, token_admin)
    get_service(request).bans.check(caller)  # 403 for a banned caller, as on the other routers
    return caller


def _origin(request: Request, address: str, account: Account | None, token_admin: bool) -> Origin:
    locale = get_locale(request)
    if account is not None:
        return Origin(platform="web", user_id=account.user_id, chat_id="web", user_name=account.name,
                      locale=locale, is_admin=account.is_admin or token_admin, address=address)
    return Origin(platform="web", user_id=client_key(request, address), chat_id="web", locale=locale,
                  is_admin=token_admin, address=address)


def get_admin(request: Request, caller: Annotated[Origin, Depends(get_caller)],
              account: Annotated[Account | None, Depends(get_account)],
              secrets: Annotated[Secrets, Depends(get_secrets)]) -> Origin:
    """The caller as an admin (an admin account, or the admin token), or a refusal: 403 when the
    admin API is off, 401 without a token, 403 with a wrong one or for an account that is not an
    admin's, 429 after too many wrong or missing tokens from the address."""
    if caller.is_admin:
        return caller
    if account is not None:
        raise UserError("not_admin")
    if not secrets.admin_token:
        raise UserError("admin_api_disabled")
    if _bearer(request) is None:
        failures = request.app.state.admin_failures
        failures.check(caller.address)
        failures.failed(caller.address)
        raise UserError("admin_token_missing")
    raise UserError("not_admin")  # a wrong token: get_token_admin has counted it


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
ApiCaller = Annotated[Origin, Depends(get_api_caller)]  # the AUTOMATIC1111-compatible API's callers
Admin = Annotated[Origin, Depends(get_admin)]
AccountDep = Annotated[Account | None, Depends(get_account)]
Admitted = Depends(require_admitted)  # for a router's dependencies: signed in where accounts are on, never banned
