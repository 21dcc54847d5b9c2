"""A fake Telegram Bot API server for tests: aiohttp on 127.0.0.1 with a random port.

It feeds `getUpdates` with raw update JSON the test queues, answers every other method with a
plausible Bot API result, and records each call with its parameters (JSON-decoded where they
are JSON) and uploaded files (multipart). Tests make a method fail a number of times with any
status and Bot API error body (a 429 with `retry_after`, a 403 "bot was blocked", a 502).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

BOT_USER = {"id": 777000111, "is_bot": True, "first_name": "Image Bot", "username": "imagebot_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    files: dict[str, bytes] = field(default_factory=dict)
    status: int = 200  # what the fake answered
    result: Any = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    def file(self, attach: str) -> bytes:
        """An uploaded file, by its field name or an "attach://name" reference."""
        return self.files[attach.removeprefix("attach://")]


@dataclass
class Failure:
    status: int
    description: str
    parameters: dict[str, Any] | None
    times: int


class FakeBotApi:
    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self.chat_admins: set[tuple[int, int]] = set()  # (chat id, user id) of group administrators
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._message_ids = itertools.count(1000)
        self._failures: dict[str, list[Failure]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.files: dict[str, bytes] = {}  # file_id -> what getFile's path downloads
        self.downloads: list[str] = []  # file ids whose bytes the bot fetched

    # --- running ---------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/bot{token}/{method}", self._handle)
        app.router.add_get("/bot{token}/{method}", self._handle)
        app.router.add_get("/file/bot{token}/{path:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None)  # its URLs carry the token: no access log
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # --- what tests do ---------------------------------------------------------------------------------

    def feed(self, update: dict[str, Any]) -> int:
        """Queue a raw update (without update_id) for getUpdates; returns its update_id."""
        update = {"update_id": next(self._update_ids), **update}
        self._updates.append(update)
        asyncio.get_running_loop().create_task(self._notify())
        return update["update_id"]

    def add_file(self, file_id: str, data: bytes) -> dict[str, Any]:
        """A file users sent (a photo, a document) that getFile and the file URL serve; returns
        its PhotoSize-like description for a raw update."""
        self.files[file_id] = data
        return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": len(data)}

    def next_message_id(self) -> int:
        return next(self._message_ids)

    def fail(self, method: str, status: int, description: str, parameters: dict[str, Any] | None = None,
             times: int = 1) -> None:
        """The next `times` calls of `method` get this error instead of a result."""
        self._failures.setdefault(method, []).append(Failure(status, description, parameters, times))

    def heal(self, method: str) -> None:
        self._failures.pop(method, None)

    def calls_of(self, method: str, where: Callable[[Call], bool] = lambda c: True) -> list[Call]:
        return [call for call in self.calls if call.method == method and where(call)]

    async def wait_for(self, method: str, where: Callable[[Call], bool] = lambda c: True, count: int = 1,
                       timeout: float = 90.0) -> list[Call]:
        """Wait until `count` calls of `method` match `where`; returns them."""
        async def matched() -> list[Call]:
            async with self._changed:
                while len(found := self.calls_of(method, where)) < count:
                    await self._changed.wait()
                return found
        try:
            return await asyncio.wait_for(matched(), timeout)
        except asyncio.TimeoutError:
            seen = [(c.method, c.status, {k: v for k, v in c.params.items() if k != "media"}) for c in self.calls[-15:]]
            raise AssertionError(f"no {count} matching {method} call(s) within {timeout} s; last calls: {seen}")

    # --- the server --------------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _handle(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        params, files = await _read_params(request)
        if method == "getUpdates":  # long polling: not recorded, it never stops
            return _ok(await self._get_updates(params))
        call = Call(method, params, files)
        failures = self._failures.get(method)
        if failures:
            failure = failures[0]
            failure.times -= 1
            if failure.times <= 0:
                failures.pop(0)
            call.status = failure.status
            self.calls.append(call)
            await self._notify()
            body = {"ok": False, "error_code": failure.status, "description": failure.description}
            if failure.parameters:
                body["parameters"] = failure.parameters
            return web.json_response(body, status=failure.status)
        call.result = self._result(method, params)
        self.calls.append(call)
        await self._notify()
        return _ok(call.result)

    async def _download(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        if file_id not in self.files:
            return _error(404, "Not Found")
        self.downloads.append(file_id)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    async def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]  # confirmed ones go
        timeout = min(float(params.get("timeout") or 0), 1.0)  # short: stopping waits for it
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not self._updates and time.monotonic() < deadline:
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
        return list(self._updates)

    def _result(self, method: str, params: dict[str, Any]) -> Any:
        if method == "getMe":
            return BOT_USER
        if method in ("sendMessage", "sendPhoto", "sendDocument"):
            return self._message(params, method)
        if method == "sendMediaGroup":
            return [self._message({**params, "caption": item.get("caption")}, "sendPhoto")
                    for item in params["media"]]
        if method in ("editMessageText", "editMessageMedia", "editMessageCaption"):
            return self._message(params, method, message_id=int(params["message_id"]))
        if method == "getFile":
            file_id = str(params["file_id"])
            if file_id not in self.files:
                return None
            return {"file_id": file_id, "file_unique_id": f"u-{file_id}", "file_size": len(self.files[file_id]),
                    "file_path": f"photos/{file_id}"}
        if method == "getChatMember":
            admin = (int(params["chat_id"]), int(params["user_id"])) in self.chat_admins
            user = {"id": int(params["user_id"]), "is_bot": False, "first_name": "Someone"}
            if admin:
                return {"status": "administrator", "user": user, "can_be_edited": False, "is_anonymous": False,
                        "can_manage_chat": True, "can_delete_messages": True, "can_manage_video_chats": True,
                        "can_restrict_members": True, "can_promote_members": False, "can_change_info": True,
                        "can_invite_users": True, "can_post_stories": False, "can_edit_stories": False,
                        "can_delete_stories": False}
            return {"status": "member", "user": user}
        return True  # setMyCommands, deleteWebhook, setWebhook, answerCallbackQuery, deleteMessage ...

    def _message(self, params: dict[str, Any], method: str, message_id: int | None = None) -> dict[str, Any]:
        chat_id = int(params["chat_id"])
        message: dict[str, Any] = {
            "message_id": message_id or self.next_message_id(), "date": int(time.time()), "from": BOT_USER,
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "supergroup",
                     **({"first_name": "User"} if chat_id > 0 else {"title": "Group"})},
        }
        if method in ("sendMessage", "editMessageText"):
            message["text"] = params.get("text", "")
        if method in ("sendPhoto", "editMessageMedia", "editMessageCaption"):
            number = message["message_id"]
            message["photo"] = [{"file_id": f"photo{number}", "file_unique_id": f"u{number}",
                                 "width": 64, "height": 64}]
            if params.get("caption"):
                message["caption"] = params["caption"]
        if method == "sendDocument":
            number = message["message_id"]
            message["document"] = {"file_id": f"doc{number}", "file_unique_id": f"d{number}"}
        # A sent message carries only an inline keyboard back (a ForceReply or keyboard is the client's).
        if isinstance(params.get("reply_markup"), dict) and "inline_keyboard" in params["reply_markup"]:
            message["reply_markup"] = params["reply_markup"]
        return message


async def _read_params(request: web.Request) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Bot API parameters arrive as a form (values JSON-encoded unless plain strings), as JSON,
    or as multipart with the uploaded files."""
    params: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    if request.content_type == "application/json":
        return await request.json(), files
    if request.content_type == "multipart/form-data":
        reader = await request.multipart()
        async for part in reader:
            data = await part.read(decode=False)
            if part.filename is not None:
                files[part.name] = bytes(data)
            else:
                params[part.name] = _value(data.decode("utf-8"))
        return params, files
    form = await request.post()
    return {key: _value(value) for key, value in form.items()}, files


def _value(text: str) -> Any:
    if text[:1] in ("{", "["):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": status, "description": description}, status=status)
