"""Signing in and out ([web] auth = "password"): the session cookie the page and API clients keep.

The cookie is HttpOnly (no script reads it), SameSite=Strict (no other site's page sends it, so a
cross-site form cannot act as the user) and Secure when the request came over HTTPS, directly or
through a trusted proxy that says so. Scripts sign in the same way and keep the cookie
(`curl -c jar -b jar`). Failed sign-ins are limited per address, as wrong admin tokens are.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from bot.core.errors import UserError
from bot.frontends.web.clients import is_trusted
from bot.frontends.web.deps import SESSION_COOKIE, AccountDep, Address, ConfigDep, ServiceDep, password_checked
from bot.frontends.web.schemas import SignInIn

router = APIRouter()


@router.get("/api/session")
async def session(config: ConfigDep, account: AccountDep) -> dict[str, Any]:
    """Whether this server has accounts, and who is signed in (the page asks this first)."""
    return {"auth": config.web.auth, "user": account.name if account else None,
            "admin": bool(account and account.is_admin)}


@router.post("/api/session")
async def sign_in(body: SignInIn, request: Request, service: ServiceDep, config: ConfigDep,
                  address: Address) -> JSONResponse:
    """Sign in with a name and password: 200 and the session cookie, 401 when they do not match,
    429 after too many failures from the address."""
    if config.web.auth != "password":
        raise UserError("accounts_off")
    started = await password_checked(request, address, body.name, "page",
                                     lambda: service.accounts.sign_in(body.name, body.password))
    response = JSONResponse({"auth": "password", "user": started.account.name, "admin": started.account.is_admin})
    response.set_cookie(SESSION_COOKIE, started.token, max_age=int(config.web.session_days * 86400), path="/",
                        httponly=True, samesite="strict", secure=came_over_https(request))
    return response


@router.delete("/api/session")
async def sign_out(request: Request, service: ServiceDep) -> JSONResponse:
    """End this session (its cookie stops working on every copy of it)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        await service.accounts.sign_out(token)
    response = JSONResponse({"user": None})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=came_over_https(request))
    return response


def came_over_https(request: Request) -> bool:
    """Whether the browser reached us over HTTPS: directly, or through a trusted proxy whose
    X-Forwarded-Proto says so (a proxy that terminates TLS talks plain HTTP to us)."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else ""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[-1].strip().lower()
    return forwarded == "https" and is_trusted(peer, request.app.state.trusted_proxies)
