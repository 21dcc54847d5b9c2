"""Checks and headers every request and answer goes through, before any route.

- Host: only the names in [web] allowed_hosts. A page on another site can point its own domain's
  DNS at this machine (DNS rebinding) and then read the API as "same origin"; the Host header it
  sends is its own name, which is refused here.
- State-changing calls (POST, PUT, DELETE) take only JSON bodies, and when the browser says where
  the call comes from (`Origin`), only from this very host. An HTML form on another site can POST
  form data or text/plain without asking (no CORS preflight), never application/json.
- Security headers on every answer: no inline or foreign scripts (CSP), no sniffing, no
  referrer, no framing.
"""

from __future__ import annotations

import ipaddress

from urllib.parse import urlsplit

from bot.config import WebConfig
from bot.frontends.web.errors import error_response
from bot.frontends.web.strings import render

CHANGING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_ADDRESS = ("", "0.0.0.0", "::", "[::]")
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def allowed_hosts(web: WebConfig) -> frozenset[str]:
    """The Host names served: the configured ones, else this machine's and `host` if it names one."""
    if web.allowed_hosts:
        return frozenset(host.strip().lower() for host in web.allowed_hosts)
    own = () if web.host in ANY_ADDRESS else (f"[{web.host}]" if ":" in web.host else web.host,)
    return frozenset((*LOCAL_HOSTS, *(host.lower() for host in own)))


def host_name(host: str) -> str:
    """A Host header without its port: "example.org:7860" -> "example.org", "[::1]:80" -> "[::1]"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[:host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


# Paths whose body is an image file (image/png, image/jpeg, ...). Like JSON, those types are not
# ones a cross-site form can send, so a browser asks this server first (CORS), which refuses.
IMAGE_BODY_PATHS = ("/api/uploads", "/api/describe")

class Security:
    """The checks and headers above, as ASGI middleware (plain ASGI: event streams pass through)."""

    def __init__(self, app, web: WebConfig) -> None:
        self.app = app
        self.hosts = allowed_hosts(web)
        # Without a list of its own, any address typed as digits is fine too (friends on a LAN open
        # http://192.168.1.5:7860): DNS rebinding needs a name the attacker controls, never a literal.
        self.any_address = not web.allowed_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *HEADERS]}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            return await refusal(scope, receive, send_with_headers)
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope):
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope.get("headers", [])}
        locale = headers.get("accept-language")
        host = headers.get("host", "")
        path = scope.get("path", "")
        if "*" not in self.hosts and host_name(host) not in self.hosts and not (
                self.any_address and _is_address(host_name(host))):
            # 421 Misdirected Request: this server is not the one that name should reach.
            return error_response(421, render("api_wrong_host", locale, host=host_name(host)[:100]), "wrong_host", path)
        if scope["method"] not in CHANGING:
            return None
        origin = headers.get("origin")
        if origin is not None and not _same_host(origin, host):
            return error_response(403, render("api_wrong_origin", locale, origin=origin[:100]), "wrong_origin", path)
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        image_body = media_type.startswith("image/") and path in IMAGE_BODY_PATHS
        if media_type and media_type != "application/json" and not image_body or has_body and not media_type:
            return error_response(415, render("api_json_only", locale), "json_only", path)
        return None


def _same_host(origin: str, host: str) -> bool:
    """Whether an Origin header names this very host (and port) the request was sent to."""
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host.strip().lower()
