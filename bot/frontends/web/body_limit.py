"""Request bodies over a size limit are refused before the application parses anything."""

from __future__ import annotations

from bot.frontends.web.errors import error_response
from bot.frontends.web.strings import render

MAX_BODY_BYTES = 64 * 1024


class BodyLimit:
    """Refuse request bodies over `limit` bytes, declared (Content-Length) or streamed (chunked).

    The body is read here first (it is small by definition) and handed on whole, so an oversized
    one is refused before the application parses anything.
    """

    def __init__(self, app, limit: int = MAX_BODY_BYTES, larger: dict[str, int] | None = None) -> None:
        self.app = app
        self.limit = limit
        self.larger = larger or {}  # path -> its own limit (image uploads)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.larger.get(scope.get("path", ""), self.limit)
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await self._refuse(scope, receive, send, limit)
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            body += message.get("body", b"")
            if len(body) > limit:
                return await self._refuse(scope, receive, send, limit)
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

    async def _refuse(self, scope, receive, send, limit: int) -> None:
        locale = dict(scope.get("headers", [])).get(b"accept-language", b"").decode("latin-1") or None
        response = error_response(413, render("api_too_large", locale, kib=limit // 1024), "too_large",
                                  scope.get("path", ""))
        await response(scope, receive, send)
