"""A local stand-in for Discord's REST API, and raw gateway payloads to feed the client.

The real discord.py client and HTTP layer talk to this server (`discord.http.Route.BASE` points
here), so every request the library makes is recorded as it went over the wire: JSON bodies and
multipart uploads (payload_json plus files). Failures can be injected per request (a 429, a 404), and
a request can be held until the test lets it through.

It is also a gateway (`GET /gateway/bot` names it): each websocket says HELLO, takes an IDENTIFY
for one shard, answers READY and a GUILD_CREATE for each of `guilds` on that shard (Discord's rule:
`(guild_id >> 22) % shard_count`), acknowledges heartbeats, and `dispatch()` sends an event down a
shard as Discord would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

APP_ID = 900000000000000001
BOT_ID = 900000000000000002
GUILD = 800000000000000001
CHANNEL = 700000000000000001
NSFW_CHANNEL = 700000000000000002
OTHER_CHANNEL = 700000000000000003
GONE_CHANNEL = 700000000000000004  # answers 404 as a deleted channel does
ALICE = 600000000000000001
BOB = 600000000000000002
ADMIN = 600000000000000003
MODERATOR = 600000000000000004  # an admin by role
ADMIN_ROLE = 500000000000000001
OPTION_TYPES = {str: 3, int: 4, bool: 5, float: 10}


@dataclass
class Upload:
    name: str  # the form field, e.g. files[0]
    filename: str
    content_type: str
    data: bytes


@dataclass
class Call:
    method: str
    path: str  # without the /api/v10 prefix
    json: Any = None  # the JSON body, or the payload_json part of a multipart body
    files: list[Upload] = field(default_factory=list)
    status: int = 200  # what the fake answered
    response: Any = None


@dataclass
class Rule:
    method: str
    pattern: re.Pattern[str]
    status: int = 0  # answer with this status (0 = normally)
    body: Any = None
    times: int = 1
    hold: asyncio.Event | None = None  # wait for this before answering


class FakeDiscord:
    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.rules: list[Rule] = []
        self._ids = itertools.count(100000000000000001)
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base = ""
        self.gateway_url = ""
        self.shards = 1  # what GET /gateway/bot recommends
        self.guilds = [GUILD]  # the servers the bot is in
        self.identified: list[list[int]] = []  # [shard id, shard count] of each IDENTIFY
        self.sockets: dict[int, web.WebSocketResponse] = {}  # shard id -> its gateway connection
        self._sequence = itertools.count(1)
        self.cdn: dict[str, bytes] = {}  # attachment path -> bytes users attached
        self.cdn_downloads: list[str] = []

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/attachments/{tail:.*}", self._cdn)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base = f"http://127.0.0.1:{port}/api/v10"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway"

    async def stop(self) -> None:
        for rule in self.rules:
            if rule.hold is not None:
                rule.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    # --- configuring ------------------------------------------------------------------------------

    def fail(self, method: str, pattern: str, status: int, body: Any = None, times: int = 1) -> None:
        self.rules.append(Rule(method, re.compile(pattern), status, body, times))

    def hold(self, method: str, pattern: str) -> asyncio.Event:
        """The next matching request is recorded at once but answered only once the event is set."""
        release = asyncio.Event()
        self.rules.append(Rule(method, re.compile(pattern), hold=release))
        return release

    # --- waiting --------------------------------------------------------------------------------

    def find(self, method: str, pattern: str, status: int | None = 200) -> list[Call]:
        regex = re.compile(pattern)
        return [c for c in self.calls if c.method == method and regex.fullmatch(c.path)
                and (status is None or c.status == status)]

    async def wait_for(self, method: str, pattern: str, where: Callable[[Call], bool] = lambda c: True,
                       status: int | None = 200, timeout: float = 120.0) -> Call:
        """The first recorded call that matches, waiting for it if need be."""
        async def poll() -> Call:
            while True:
                self._changed.clear()
                for call in self.find(method, pattern, status):
                    if where(call):
                        return call
                await self._changed.wait()
        try:
            return await asyncio.wait_for(poll(), timeout)
        except asyncio.TimeoutError:
            seen = "\n".join(f"  {c.method} {c.path} -> {c.status}" for c in self.calls)
            raise AssertionError(f"no {method} {pattern} within {timeout} s; calls were:\n{seen}") from None

    def attach(self, filename: str, data: bytes, content_type: str = "image/png") -> dict:
        """A file a user attached, served by this fake's CDN; returns the attachment object."""
        attachment_id = str(next(self._ids))
        path = f"{attachment_id}/{filename}"
        self.cdn[path] = data
        url = self.base.replace("/api/v10", "/attachments/") + path
        return {"id": attachment_id, "filename": filename, "size": len(data), "url": url, "proxy_url": url,
                "content_type": content_type}

    async def _cdn(self, request: web.Request) -> web.Response:
        path = request.match_info["tail"]
        if path not in self.cdn:
            return web.Response(status=404)
        self.cdn_downloads.append(path)
        return web.Response(body=self.cdn[path], content_type="application/octet-stream")

    # --- answering ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        call = Call(request.method, path)
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            async for part in reader:
                data = await part.read()
                if part.name == "payload_json":
                    call.json = json.loads(data)
                else:
                    call.files.append(Upload(part.name or "", part.filename or "", part.headers.get("Content-Type", ""),
                                             bytes(data)))
        elif request.can_read_body:
            text = await request.text()
            call.json = json.loads(text) if text else None
        self.calls.append(call)
        self._changed.set()

        rule = self._rule(request.method, path)
        if rule is not None and rule.hold is not None:
            await rule.hold.wait()
        if rule is not None and rule.status:
            status, body = rule.status, rule.body or {"message": "injected", "code": 0}
            headers = {}
            if status == 429:
                # discord.py treats a 429 without a Via header as a Cloudflare ban, not a rate limit.
                headers = {"Via": "1.1 google", "X-RateLimit-Scope": "user", "Retry-After": "1"}
                body = {"message": "You are being rate limited.", "retry_after": 0.05, "global": False}
        else:
            (status, body), headers = self._answer(request.method, path, call), {}
        call.status, call.response = status, body
        self._changed.set()
        if status == 204 or body is None:
            return web.Response(status=204)
        # Exactly "application/json": with a charset parameter discord.py would not parse the body.
        return web.Response(status=status, body=json.dumps(body).encode(),
                            headers={"Content-Type": "application/json", **headers})

    def _rule(self, method: str, path: str) -> Rule | None:
        for rule in self.rules:
            if rule.times > 0 and rule.method == method and rule.pattern.fullmatch(path):
                rule.times -= 1
                return rule
        return None

    def _answer(self, method: str, path: str, call: Call) -> tuple[int, Any]:
        try:
            return 200, self._route(method, path, call)
        except LookupError as error:
            return 404, {"message": str(error), "code": 10003}

    def _route(self, method: str, path: str, call: Call) -> Any:
        if path == "/users/@me":
            return bot_user()
        if path == "/gateway/bot":
            return {"url": self.gateway_url, "shards": self.shards,
                    "session_start_limit": {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}}
        if path == "/oauth2/applications/@me":
            return {"id": str(APP_ID), "name": "imagebot", "icon": None, "description": "", "bot_public": True,
                    "bot_require_code_grant": False, "verify_key": "0" * 64, "flags": 0,
                    "owner": {"id": str(ADMIN), "username": "owner", "discriminator": "0", "avatar": None}}
        if re.fullmatch(r"/applications/\d+(/guilds/\d+)?/commands", path) and method == "PUT":
            # Discord answers context menu commands with an empty description too.
            return [{"description": "", **command, "id": str(next(self._ids)), "application_id": str(APP_ID),
                     "version": "1"} for command in call.json]
        match = re.fullmatch(r"/interactions/(\d+)/([^/]+)/callback", path)
        if match:
            kind = call.json["type"]
            answer: dict[str, Any] = {"interaction": {"id": match.group(1), "type": 2}}
            if kind in (4, 5):  # a new message; deferred updates and autocomplete answers have none
                data = call.json.get("data") or {}
                message = self.message(data, CHANNEL, call.files)
                answer["interaction"].update(response_message_id=message["id"], response_message_loading=kind == 5,
                                             response_message_ephemeral=bool(data.get("flags", 0) & 64))
                answer["resource"] = {"type": kind, "message": message}
            return answer
        if method == "DELETE":
            return None
        if re.fullmatch(rf"/channels/{GONE_CHANNEL}/messages", path):
            raise LookupError("Unknown Channel")
        match = re.fullmatch(r"/channels/(\d+)/messages", path)
        if match:
            return self.message(call.json, int(match.group(1)), call.files)
        if path.startswith("/webhooks/"):
            return self.message(call.json or {}, CHANNEL, call.files)
        raise LookupError(f"Unknown route {method} {path}")

    # --- the gateway ---------------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse()
        await socket.prepare(request)
        await socket.send_json({"op": 10, "d": {"heartbeat_interval": 45000}, "s": None, "t": None})
        async for frame in socket:
            data = json.loads(frame.data)
            if data["op"] == 1:  # heartbeat
                await socket.send_json({"op": 11, "d": None, "s": None, "t": None})
            elif data["op"] == 2:  # identify
                shard_id, count = data["d"].get("shard", [0, 1])
                self.identified.append([shard_id, count])
                self.sockets[shard_id] = socket
                mine = [guild for guild in self.guilds if (guild >> 22) % count == shard_id]
                await self._send(socket, "READY", {
                    "v": 10, "user": bot_user(), "session_id": f"session-{shard_id}", "shard": [shard_id, count],
                    "resume_gateway_url": self.gateway_url, "application": {"id": str(APP_ID), "flags": 0},
                    "guilds": [{"id": str(guild), "unavailable": True} for guild in mine]})
                for guild in mine:
                    await self._send(socket, "GUILD_CREATE", guild_payload(guild))
                self._changed.set()
        return socket

    async def _send(self, socket: web.WebSocketResponse, event: str, data: dict) -> None:
        await socket.send_json({"op": 0, "t": event, "s": next(self._sequence), "d": data})

    async def dispatch(self, shard_id: int, event: str, data: dict) -> None:
        """Send a gateway event (e.g. INTERACTION_CREATE) down the connection of shard `shard_id`."""
        await self._send(self.sockets[shard_id], event, data)

    def message(self, payload: dict, channel_id: int, files: list[Upload] = ()) -> dict:
        attachments = [{"id": str(next(self._ids)), "filename": f.filename, "size": len(f.data),
                        "url": f"https://cdn.invalid/{f.filename}", "proxy_url": f"https://cdn.invalid/{f.filename}"}
                       for f in files]
        return {
            "id": str(next(self._ids)), "channel_id": str(channel_id), "guild_id": str(GUILD), "author": bot_user(),
            "content": payload.get("content") or "", "embeds": payload.get("embeds") or [],
            "components": payload.get("components") or [], "attachments": attachments,
            "timestamp": "2024-01-01T00:00:00+00:00", "edited_timestamp": None, "tts": False,
            "mention_everyone": False, "mentions": [], "mention_roles": [], "pinned": False, "type": 0,
            "flags": payload.get("flags") or 0, "application_id": str(APP_ID),
        }


def bot_user() -> dict:
    return {"id": str(BOT_ID), "username": "imagebot", "discriminator": "0", "avatar": None, "bot": True,
            "global_name": None, "flags": 0}


def guild_payload(guild: int) -> dict:
    """A GUILD_CREATE of a server with one text channel, as the `guilds` intent delivers it."""
    channel = CHANNEL if guild == GUILD else guild + 1
    return {"id": str(guild), "name": f"server-{guild}", "owner_id": str(ADMIN), "unavailable": False,
            "member_count": 3, "large": False, "joined_at": "2024-01-01T00:00:00+00:00", "preferred_locale": "en-US",
            "roles": [], "emojis": [], "stickers": [], "features": [], "members": [], "voice_states": [],
            "presences": [], "threads": [], "stage_instances": [], "guild_scheduled_events": [],
            "channels": [{"id": str(channel), "type": 0, "guild_id": str(guild), "name": "general", "position": 0,
                          "nsfw": False, "permission_overwrites": []}],
            "verification_level": 0, "default_message_notifications": 0, "explicit_content_filter": 0,
            "mfa_level": 0, "nsfw_level": 0, "premium_tier": 0, "system_channel_flags": 0}


_interaction_ids = itertools.count(300000000000000001)


def _base(kind: int, user: int, channel: int, roles: tuple[int, ...], locale: str, size_limit: int) -> dict:
    interaction_id = next(_interaction_ids)
    return {
        "id": str(interaction_id), "application_id": str(APP_ID), "type": kind, "token": f"token-{interaction_id}",
        "version": 1, "guild_id": str(GUILD), "channel_id": str(channel),
        "channel": {"id": str(channel), "type": 0, "guild_id": str(GUILD), "name": f"channel-{channel}",
                    "position": 0, "nsfw": channel == NSFW_CHANNEL, "permission_overwrites": []},
        "member": {"user": {"id": str(user), "username": f"user{user % 100}", "discriminator": "0", "avatar": None,
                            "global_name": None},
                   "roles": [str(r) for r in roles], "joined_at": "2024-01-01T00:00:00+00:00", "deaf": False,
                   "mute": False, "flags": 0, "permissions": "2248473465835073"},
        "locale": locale, "guild_locale": "en-US", "app_permissions": "2248473465835073",
        "attachment_size_limit": size_limit, "entitlements": [], "authorizing_integration_owners": {"0": str(GUILD)},
        "context": 0,
    }


def command(name: str, *, user: int = ALICE, channel: int = CHANNEL, roles: tuple[int, ...] = (),
            locale: str = "en-US", size_limit: int = 10 * 1024 * 1024, **options: Any) -> dict:
    """An INTERACTION_CREATE payload of a slash command with its options."""
    payload = _base(2, user, channel, roles, locale, size_limit)
    payload["data"] = {"id": "1", "name": name, "type": 1, "guild_id": str(GUILD), "options": _options(options)}
    return payload


def _options(options: dict[str, Any]) -> list[dict]:
    return [{"name": key, "type": OPTION_TYPES[type(value)], "value": value} for key, value in options.items()]


def with_attachment(payload: dict, option: str, attachment: dict) -> dict:
    """`payload` (a slash command) with an attachment option, resolved as Discord sends it."""
    payload["data"]["options"].append({"name": option, "type": 11, "value": attachment["id"]})
    payload["data"].setdefault("resolved", {}).setdefault("attachments", {})[attachment["id"]] = attachment
    return payload


def subcommand(group: str, sub: str, /, *, user: int = ALICE, channel: int = CHANNEL, roles: tuple[int, ...] = (),
               locale: str = "en-US", **options: Any) -> dict:
    """An INTERACTION_CREATE payload of `/group sub` with its options (a subcommand is an option of
    type 1 holding the real options)."""
    payload = command(group, user=user, channel=channel, roles=roles, locale=locale)
    payload["data"]["options"] = [{"name": sub, "type": 1, "options": _options(options)}]
    return payload


def autocomplete(name: str, focused: str, value: str, *, user: int = ALICE, **options: Any) -> dict:
    payload = command(name, user=user, **options)
    payload["type"] = 4
    payload["data"]["options"].append({"name": focused, "type": 3, "value": value, "focused": True})
    return payload


def subcommand_autocomplete(group: str, sub: str, focused: str, value: str, /, *, user: int = ALICE,
                            **options: Any) -> dict:
    payload = subcommand(group, sub, user=user, **options)
    payload["type"] = 4
    payload["data"]["options"][0]["options"].append({"name": focused, "type": 3, "value": value, "focused": True})
    return payload


def click(custom_id: str, message: dict, *, user: int = ALICE, channel: int = CHANNEL,
          roles: tuple[int, ...] = ()) -> dict:
    """An INTERACTION_CREATE payload of a button click on `message` (as the fake returned it)."""
    payload = _base(3, user, channel, roles, "en-US", 10 * 1024 * 1024)
    payload["message"] = message
    payload["data"] = {"custom_id": custom_id, "component_type": 2}
    return payload


def modal_submit(custom_id: str, values: dict[str, str], *, user: int = ALICE, channel: int = CHANNEL) -> dict:
    """An INTERACTION_CREATE payload of a modal's submission: `values` by text input custom id."""
    payload = _base(5, user, channel, (), "en-US", 10 * 1024 * 1024)
    payload["data"] = {"custom_id": custom_id, "components": [
        {"type": 1, "components": [{"type": 4, "custom_id": key, "value": value}]} for key, value in values.items()]}
    return payload


def custom_ids(message: dict) -> list[str]:
    return [c["custom_id"] for row in message.get("components", []) for c in row.get("components", [])]
