"""The Discord frontend: slash commands, progress, results with buttons (discord.py 2.x).

`imagebot serve` calls `start()` when DISCORD_TOKEN is set. This package is
`bot.frontends.discord`; its modules import the library as `import discord` (absolute), which is
never this package.

Modules: client (lifecycle), slash (the commands as Discord sees them), commands (what commands and
clicks do), interactions (answering in time, errors), views (persistent buttons), delivery (progress
and results), render (texts, embeds, files), listings (/queue, /history and /model's list),
access (admins, channels, age-restricted channels).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from bot.config import Config, Secrets
from bot.frontends.discord.client import DiscordFrontend


async def start(service: Any, config: Config, secrets: Secrets, *, clock: Callable[[], float] = time.monotonic,
                gateway: bool = True) -> DiscordFrontend:
    """Start the bot in the running loop without waiting for it; `await frontend.stop()` ends it.

    `clock` is what the 15-minute interaction window and the edit throttle are measured with.
    """
    if not secrets.discord_token:
        raise ValueError("DISCORD_TOKEN is not set")
    frontend = DiscordFrontend(service, config, clock)
    await frontend.start(secrets.discord_token, gateway=gateway)
    return frontend


__all__ = ["start", "DiscordFrontend"]
