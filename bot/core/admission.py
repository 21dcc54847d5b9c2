"""Admission: whether a request may join the queue, and what it becomes once defaults apply.

Defaults layer from nearest to farthest: what the user typed, the user's own default flags, the
chat's default flags, the chat's model (else the global default model), then the model's own
defaults and the configured limits (`resolve`). Quotas are checked and the job inserted as one
step, so concurrent requests of one user cannot slip past a limit together.

Who may change defaults is decided here too: anyone their own, those who run a chat (or the bot's
admins) the chat's.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from bot.config import Config
from bot.core.bans import Bans
from bot.core.errors import UserError
from bot.core.jobs import Origin, QueuedJob
from bot.core.moderation import check_prompt
from bot.core.request import GenerationRequest, RequestOptions, parse_prompt
from bot.core.resolve import resolve
from bot.core.store import Store, storage_errors
from bot.models.variant import VariantDefaults

DEFAULT_MODEL_SETTING = "default_model"
CHAT_MODEL_SETTING = "model"
CHAT_FLAGS_SETTING = "flags"
USER_SCOPE_PREFIX = "user:"  # chat_settings rows of chat "user:<id>" hold one user's own defaults


class Catalog(Protocol):
    """The model store as the core sees it (bot.models.registry.Registry fits)."""

    def scan(self) -> Any: ...

    def scan_if_due(self) -> Any: ...

    def ready_defaults(self) -> dict[str, VariantDefaults]: ...

    def unavailable(self) -> dict[str, str]: ...

    def lora_bases(self) -> dict[str, str]: ...

    def entries(self) -> list[Any]: ...


class Admission:
    def __init__(self, config: Config, store: Store, catalog: Catalog, bans: Bans) -> None:
        self.config = config
        self.bans = bans
        self.store = store
        self.catalog = catalog
        self.storage_problem: str | None = None  # the last write's failure, until a write succeeds
        self._lock = asyncio.Lock()

    async def admit(self, options: RequestOptions, origin: Origin) -> tuple[GenerationRequest, QueuedJob]:
        """Resolve, check the user's quotas and insert the job; a refusal is a UserError (a full
        disk is "storage_full", nothing else stored changes)."""
        self.bans.check(origin)
        request = await self.resolve_request(options, origin)
        check_prompt(request.prompt, origin, self.config.moderation.blocklist)
        async with self._lock:  # quota check and insert as one step, or concurrent requests slip past
            if not origin.is_admin:
                await self._check_quota(origin)
            try:
                with storage_errors():
                    entry = await self.store.add_job(request, origin)
            except UserError as error:
                self.storage_problem = f"the database cannot be written: {error.__cause__}"
                raise
        self.storage_problem = None
        return request, entry

    async def resolve_request(self, options: RequestOptions, origin: Origin) -> GenerationRequest:
        """Apply the user's and the chat's default flags and model, then the model's defaults and the limits."""
        own = await self.store.chat_settings(origin.platform, _user_scope(origin))
        if own.get(CHAT_FLAGS_SETTING):  # the user's own defaults first, then the chat's: the nearer wins
            options = _with_defaults(options, parse_prompt("x " + own[CHAT_FLAGS_SETTING]))
        chat = await self.store.chat_settings(origin.platform, origin.chat_id) if origin.chat_id else {}
        if chat.get(CHAT_FLAGS_SETTING):
            options = _with_defaults(options, parse_prompt("x " + chat[CHAT_FLAGS_SETTING]))
        self.catalog.scan_if_due()
        default = await self.default_model(origin)
        return resolve(options, self.catalog.ready_defaults(), default, self.config.limits,
                       models_dir=self.config.storage.models_dir, unavailable=self.catalog.unavailable(),
                       lora_bases=self.catalog.lora_bases())

    async def _check_quota(self, origin: Origin) -> None:
        limits, store = self.config.queue, self.store
        _within(await store.count_unfinished(origin.user_key), limits.max_queued_per_user, "queue_full")
        _within(await store.usage_last_hour(origin.user_key), limits.max_jobs_per_hour, "rate_limited")
        if origin.address_key:  # a client can invent user keys, not addresses
            _within(await store.count_unfinished_from(origin.address), limits.max_queued_per_address,
                    "address_queue_full")
            _within(await store.usage_last_hour(origin.address_key), limits.max_jobs_per_hour_per_address,
                    "address_rate_limited")

    # --- defaults ------------------------------------------------------------------------------------

    async def default_model(self, origin: Origin | None = None) -> str:
        if origin is not None and origin.chat_id:
            chat = await self.store.chat_settings(origin.platform, origin.chat_id)
            if chat.get(CHAT_MODEL_SETTING):
                return chat[CHAT_MODEL_SETTING]
        return await self.store.get_setting(DEFAULT_MODEL_SETTING) or self.config.models.default

    async def set_chat_flags(self, flags: str, by: Origin) -> None:
        """Per-chat default flags such as "--ar 3:2 --steps 30" (checked now, applied to each request).
        Only those who run the chat (`manages_chat`) or the bot's admins may."""
        if not (by.is_admin or by.manages_chat):
            raise UserError("chat_admins_only")
        parse_prompt("x " + flags)  # refuse bad flags now, not on every later request
        await self.store.set_chat_setting(by.platform, by.chat_id, CHAT_FLAGS_SETTING, flags.strip() or None)

    async def set_user_flags(self, flags: str, by: Origin) -> None:
        """One user's default flags, applied to each of their requests before the chat's defaults."""
        parse_prompt("x " + flags)
        await self.store.set_chat_setting(by.platform, _user_scope(by), CHAT_FLAGS_SETTING, flags.strip() or None)

    async def default_flags(self, origin: Origin) -> dict[str, str | None]:
        """The default flags that apply to `origin`: {"user": ..., "chat": ...} (None = not set)."""
        own = await self.store.chat_settings(origin.platform, _user_scope(origin))
        chat = await self.store.chat_settings(origin.platform, origin.chat_id) if origin.chat_id else {}
        return {"user": own.get(CHAT_FLAGS_SETTING), "chat": chat.get(CHAT_FLAGS_SETTING)}


def _within(count: int, limit: int, refusal: str) -> None:
    """Refuse with the `refusal` message once `count` reaches `limit` (0: no limit)."""
    if limit and count >= limit:
        raise UserError(refusal, count=count, limit=limit)


def _with_defaults(user: RequestOptions, defaults: RequestOptions) -> RequestOptions:
    """Default flags fill in what the user did not say; the user's own size or aspect replaces
    the defaults' size or aspect as a whole."""
    values = {name: getattr(user, name) if getattr(user, name) is not None else getattr(defaults, name)
              for name in RequestOptions.__dataclass_fields__}
    if user.aspect is not None or user.width is not None or user.height is not None:
        values.update(aspect=user.aspect, width=user.width, height=user.height)
    return RequestOptions(**values)


def _user_scope(origin: Origin) -> str:
    return USER_SCOPE_PREFIX + origin.user_id
