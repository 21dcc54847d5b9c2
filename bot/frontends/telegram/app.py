"""Wiring: the python-telegram-bot Application, its handlers, the delivery, start and stop.

It runs inside `imagebot serve`'s event loop next to the web server, so the Application's
lifecycle is driven by hand (initialize, start the updater, start) instead of `run_polling()`,
which would own the loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from urllib.parse import urlparse

from telegram import BotCommand, BotCommandScopeDefault
from telegram.error import InvalidToken, NetworkError, TelegramError
from telegram.ext import AIORateLimiter, Application

from bot.config import Config, Secrets
from bot.core.messages import FALLBACK_LOCALE
from bot.core.service import Service
from bot.frontends.delivery import FIRST_RETRY_SECONDS, MAX_RETRY_SECONDS
from bot.frontends.telegram.delivery import Delivery
from bot.frontends.telegram.errors import loggable
from bot.frontends.telegram.handlers import COMMANDS, Handlers
from bot.frontends.telegram.strings import STRINGS, render

log = logging.getLogger(__name__)

ALLOWED_UPDATES = ["message", "callback_query"]  # edits, reactions, member changes: not ours
POLL_TIMEOUT = 30  # seconds a getUpdates call may wait for news (long polling)
FLOOD_RETRIES = 5  # times a request is retried after Telegram says "retry after N seconds"
WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what Telegram accepts as secret_token


class TelegramFrontend:
    def __init__(self, service: Service, config: Config, secrets: Secrets) -> None:
        if not secrets.telegram_token:
            raise ValueError("TELEGRAM_TOKEN is not set")
        self.service = service
        self.config = config
        self.secrets = secrets
        self.app = _build(config.telegram.base_url, config.telegram.base_file_url, secrets.telegram_token)
        Handlers(service, config).register(self.app)
        self.delivery = Delivery(self.app.bot, service, config)
        self._updating = False
        self._connecting: asyncio.Task | None = None

    async def start(self) -> None:
        """Connect and start. If the Bot API cannot be reached now, keep trying in the background
        (the rest of `imagebot serve` runs meanwhile); a token Telegram refuses turns the bot off."""
        telegram = self.config.telegram
        if telegram.mode == "webhook" and not WEBHOOK_SECRET.fullmatch(self.secrets.telegram_webhook_secret or ""):
            # Without it anyone who finds the URL could post updates in an admin's name.
            raise ValueError("telegram.mode = \"webhook\" needs TELEGRAM_WEBHOOK_SECRET in the environment "
                             "(1-256 characters: letters, digits, '_' and '-')")
        try:
            await self._connect()
        except InvalidToken:  # its message quotes the token: not logged
            log.error("telegram: the Bot API refused TELEGRAM_TOKEN; the Telegram bot is off. "
                      "Check the token @BotFather gave you.")
        except NetworkError as error:
            log.warning("telegram: cannot reach the Bot API (%s); trying again in the background", loggable(error))
            self._connecting = asyncio.create_task(self._keep_connecting(), name="telegram-connect")

    async def _keep_connecting(self) -> None:
        delay = FIRST_RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                await self._connect()
                return
            except InvalidToken:
                log.error("telegram: the Bot API refused TELEGRAM_TOKEN; the Telegram bot is off.")
                return
            except NetworkError as error:
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                log.warning("telegram: still cannot reach the Bot API (%s); next try in %.0f s", loggable(error),
                            delay)

    async def _connect(self) -> None:
        telegram = self.config.telegram
        await self.app.initialize()  # getMe: a wrong token fails here, with InvalidToken
        await self._register_commands()
        if telegram.mode == "webhook":
            await self.app.updater.start_webhook(
                listen=telegram.webhook_listen, port=telegram.webhook_port,
                url_path=urlparse(telegram.webhook_url).path.lstrip("/"), webhook_url=telegram.webhook_url,
                secret_token=self.secrets.telegram_webhook_secret, allowed_updates=ALLOWED_UPDATES)
        else:
            await self.app.updater.start_polling(timeout=POLL_TIMEOUT, allowed_updates=ALLOWED_UPDATES)
        self._updating = True
        await self.app.start()
        await self.delivery.start()
        log.info("telegram bot @%s is running (%s)", self.app.bot.username, telegram.mode)

    async def stop(self) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
        await self.delivery.stop()
        if self._updating:
            self._updating = False
            await self.app.updater.stop()
        if self.app.running:
            await self.app.stop()
        await self.app.shutdown()
        log.info("telegram bot stopped")

    async def _register_commands(self) -> None:
        """The command menu clients show, in English and in every other catalogue language."""
        try:
            for language in STRINGS:
                commands = [BotCommand(name, render(key, language)) for name, key in COMMANDS.items()]
                code = None if language == FALLBACK_LOCALE else language
                await self.app.bot.set_my_commands(commands, scope=BotCommandScopeDefault(), language_code=code)
        except TelegramError as error:  # the bot works without its menu
            log.warning("telegram: could not register the command menu: %s", loggable(error))


def _build(base_url: str, base_file_url: str, token: str) -> Application:
    builder = (Application.builder().token(token)
               .rate_limiter(AIORateLimiter(max_retries=FLOOD_RETRIES))
               .concurrent_updates(True))  # one slow update (an upload, say) never holds up the others
    if base_url:
        builder = builder.base_url(base_url)
        file_url = base_file_url or _file_url(base_url)
        if file_url:
            builder = builder.base_file_url(file_url)
    elif base_file_url:
        builder = builder.base_file_url(base_file_url)
    return builder.build()


def _file_url(base_url: str) -> str:
    """A local Bot API server serves files under /file/bot<token> next to /bot<token>."""
    return base_url[: -len("/bot")] + "/file/bot" if base_url.endswith("/bot") else ""
