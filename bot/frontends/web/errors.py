"""Errors as the API answers them: `{"error": a text fit to show a person, "key": what a program
checks}`, with a status that says what kind of error it is. Under /sdapi/ (the AUTOMATIC1111-compatible
API) they take the shape its clients parse: `{"error": a type name, "detail": the text, "body",
"errors"}`, with the same `key` and status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from bot.core.errors import UserError
from bot.frontends.web.deps import get_locale
from bot.frontends.web.strings import explain, render

# UserError keys that are not "bad input" (400) but something else.
STATUS_BY_KEY = {
    "job_not_found": 404,
    "not_your_job": 403,
    "not_admin": 403,
    "admin_api_disabled": 403,
    "admin_token_missing": 401,
    "banned": 403,
    "ban_bad_address": 422,
    "queue_full": 429,
    "address_queue_full": 429,
    "address_rate_limited": 429,
    "rate_limited": 429,
    "shutting_down": 503,
    "storage_unavailable": 503,
    "storage_full": 507,  # Insufficient Storage: the disk (or the database's size limit) is full
    "upload_too_large": 413,
    "upload_too_many_pixels": 413,
    "upload_not_image": 415,
    "upload_unknown": 404,
    "uploads_full": 503,
    "user_uploads_full": 429,
    "address_uploads_full": 429,
    "describe_rate_limited": 429,
    "describe_not_configured": 501,
    "describe_not_configured_admin": 501,
    "describe_broken": 503,
    "api_too_many_streams": 429,
    "api_too_many_admin_failures": 429,
    "sign_in_required": 401,
    "sign_in_failed": 401,
    "api_too_many_sign_in_failures": 429,
    "accounts_off": 404,
    "a1111_sign_in_required": 401,
}
# ... and where the AUTOMATIC1111-compatible API answers otherwise, as A1111 does: a value refused
# is 422 (its validation errors), an unknown model 404 ("Model not found").
A1111_STATUS_BY_KEY = {"unknown_model": 404}


A1111_PREFIX = "/sdapi/"


def error_response(status: int, message: str, key: str, path: str = "", kind: str = "HTTPException") -> JSONResponse:
    """The error answer for a request to `path`; `kind` names the error's type where the
    AUTOMATIC1111 shape shows one."""
    if path.startswith(A1111_PREFIX):
        return a1111_error(status, message, key, kind)
    return JSONResponse({"error": message, "key": key}, status_code=status)


def a1111_error(status: int, detail: str, key: str, kind: str = "HTTPException") -> JSONResponse:
    """As AUTOMATIC1111's api_middleware answers: the exception's type, its detail, and `errors` as
    str() of its HTTPException reads ("403: ..."). A 401 asks for HTTP Basic auth, as --api-auth does."""
    headers = {"WWW-Authenticate": 'Basic realm="imagebot"'} if status == 401 else None
    return JSONResponse({"error": kind, "detail": detail, "body": "", "errors": f"{status}: {detail}", "key": key},
                        status_code=status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(RequestValidationError, invalid_request)


async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    path = request.url.path
    if error.status_code == 404:
        return error_response(404, render("api_not_found", get_locale(request)), "not_found", path)
    return error_response(error.status_code, str(error.detail), "http_error", path)


async def user_error(request: Request, error: UserError) -> JSONResponse:
    path = request.url.path
    status = STATUS_BY_KEY.get(error.key, 400)
    if path.startswith(A1111_PREFIX):
        status = A1111_STATUS_BY_KEY.get(error.key, 422 if status == 400 else status)
    return error_response(status, explain(error, get_locale(request)), error.key, path)


async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item.get("loc", ()) if part != "body") or "body"
        problems.append(f"{where}: {item.get('msg', 'invalid')}")
    text = render("api_invalid_request", get_locale(request), problems="; ".join(problems))
    return error_response(422, text, "invalid_request", request.url.path, kind="RequestValidationError")
