"""The Telegram bot: a thin adapter between python-telegram-bot and the service.

`imagebot serve` calls `await start(service, config, secrets)` when TELEGRAM_TOKEN is set and
`await frontend.stop()` on shutdown. Modules: app (wiring and lifecycle), handlers (commands,
prompts, buttons), delivery (following jobs, sending results), progress (the status message),
keyboards (buttons and their callback data), texts (what the bot writes), media (photo files),
errors (log lines without the token).
"""

from __future__ import annotations

from bot.config import Config, Secrets
from bot.core.service import Service
from bot.frontends.telegram.app import TelegramFrontend

__all__ = ["TelegramFrontend", "start"]


async def start(service: Service, config: Config, secrets: Secrets) -> TelegramFrontend:
    """Connect to Telegram, register the commands, start receiving updates and delivering results."""
    frontend = TelegramFrontend(service, config, secrets)
    try:
        await frontend.start()
    except BaseException:
        await frontend.stop()
        raise
    return frontend
