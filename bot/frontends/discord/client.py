"""The discord.py client and the frontend's lifecycle: log in, register buttons and commands, sync
them, start delivering, and close again."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable

import aiohttp
import discord

from bot.config import Config
from bot.frontends.discord import slash
from bot.frontends.discord.commands import Commands
from bot.frontends.discord.delivery import Delivery
from bot.frontends.discord.describing import DescribeButton
from bot.frontends.discord.interactions import CatalogueTranslator, Tree
from bot.frontends.discord.views import ResultButton

log = logging.getLogger(__name__)

# Discord cannot be reached at all (no network yet at boot, DNS, an outage): keep trying to log in.
# A refused token is not among these; it ends the Discord bot with one clear line.
UNREACHABLE = (OSError, aiohttp.ClientError, asyncio.TimeoutError, discord.DiscordServerError)
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0


class ImageBot(discord.AutoShardedClient):
    """One process, as many gateway shards as the bot needs: `[discord] shards`, or with 0 what
    Discord recommends for the number of servers the bot is in (`GET /gateway/bot`; one shard
    below about a thousand servers, and Discord requires them from 2,500)."""

    def __init__(self, frontend: "DiscordFrontend") -> None:
        # Slash commands and buttons need no privileged intents; guilds keeps channels and roles cached.
        intents = discord.Intents.none()
        intents.guilds = True
        # This bot never joins voice: no warnings about missing voice libraries.
        discord.VoiceClient.warn_nacl = False
        discord.VoiceClient.warn_dave = False
        # Nobody is pinged unless a message names them explicitly (prompts may contain @everyone).
        super().__init__(intents=intents, allowed_mentions=discord.AllowedMentions.none(),
                         shard_count=frontend.config.discord.shards or None)
        self.frontend = frontend
        self.tree = Tree(self)

    async def setup_hook(self) -> None:
        """Runs once after login, before the gateway connects."""
        await self.frontend.setup()

    async def on_shard_ready(self, shard_id: int) -> None:
        log.info("discord: gateway shard %d of %d ready", shard_id + 1, self.shard_count or 1)


class DiscordFrontend:
    def __init__(self, service: Any, config: Config, clock: Callable[[], float] = time.monotonic) -> None:
        self.service = service
        self.config = config
        self.client = ImageBot(self)
        self.delivery = Delivery(service, config, self.client, clock)
        self.commands = Commands(service, config, self.delivery)
        self.ready = asyncio.Event()  # set once logged in, commands synced and delivery running
        self._task: asyncio.Task | None = None

    async def start(self, token: str, *, gateway: bool = True) -> None:
        """Log in and connect in the background; returns at once. `gateway=False` logs in only
        (interactions are then fed in by whoever drives the client, as the tests do)."""
        self._task = asyncio.create_task(self._run(token, gateway), name="discord")
        self._task.add_done_callback(_report)

    async def _run(self, token: str, gateway: bool) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                await self.client.login(token)  # runs setup_hook once it got through
                break
            except UNREACHABLE as error:
                log.warning("discord: cannot reach Discord (%s: %s); trying again in %.0f s",
                            type(error).__name__, error, delay)
                # A fresh HTTP session for the next try (each login attempt opens one).
                await self.client.http.close()
                self.client.http.connector = discord.utils.MISSING
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
        if gateway:
            await self.client.connect()  # from here on discord.py reconnects by itself

    async def setup(self) -> None:
        # Persistent buttons: one pattern answers every result's buttons, also those sent before a restart.
        self.client.add_dynamic_items(ResultButton, DescribeButton)
        slash.register(self.client.tree, self.commands, self.config.limits)
        await self.client.tree.set_translator(CatalogueTranslator())
        await self._sync()
        await self.delivery.start()
        self.ready.set()

    async def _sync(self) -> None:
        tree = self.client.tree
        try:
            if self.config.discord.test_guild:
                # A test server gets the commands at once; global commands can take a while to show.
                guild = discord.Object(self.config.discord.test_guild)
                tree.copy_global_to(guild=guild)
                synced = await tree.sync(guild=guild)
                log.info("synced %d commands to the test server %s", len(synced), guild.id)
            else:
                synced = await tree.sync()
                log.info("synced %d commands globally", len(synced))
        except (discord.HTTPException, *UNREACHABLE) as error:
            # The commands registered last time keep working; the bot serves them regardless.
            log.error("syncing the slash commands failed: %s", error)

    async def stop(self) -> None:
        await self.delivery.stop()
        await self.client.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


def _report(task: asyncio.Task) -> None:
    if task.cancelled() or task.exception() is None:
        return
    error = task.exception()
    if isinstance(error, discord.LoginFailure):
        log.error("Discord refused DISCORD_TOKEN (%s); the Discord bot is not running", error)
    elif isinstance(error, discord.PrivilegedIntentsRequired):
        log.error("Discord asks for privileged intents: %s", error)
    else:
        log.error("the Discord bot stopped: %r", error, exc_info=error)
