"""A running stack per test: store, registry, GPU worker thread and service on the tiny model, and
the Telegram bot (the real python-telegram-bot Application and HTTP layer) polling a fake Bot API
server that feeds it raw updates and records every call it makes."""

from __future__ import annotations

from typing import Any

import pytest

from bot.config import Secrets
from bot.frontends import telegram
from tests.helpers.fake_telegram import FakeBotApi
from tests.helpers.service import start_service
from tests.helpers.telegram import ROOT, TOKEN, Stack


@pytest.fixture
async def fake_api():
    server = FakeBotApi(TOKEN)
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def make_stack(tmp_path, models_dir, fake_api):
    """make_stack(telegram={...}, queue={...}) -> the service and the Telegram bot, running.
    Stacks made in one test share the database and outputs: a second one is a restart."""
    stacks: list[Stack] = []

    async def make(webhook_secret: str | None = None, token: str = TOKEN, **sections: dict[str, Any]) -> Stack:
        telegram_settings = {"base_url": fake_api.base_url, "admins": [ROOT["id"]], **sections.pop("telegram", {})}
        config, store, _, service = await start_service(tmp_path / "state", models_dir, telegram=telegram_settings,
                                                        **sections)
        try:
            frontend = await telegram.start(service, config, Secrets(telegram_token=token,
                                                                     telegram_webhook_secret=webhook_secret))
        except BaseException:
            await service.stop()
            await store.close()
            raise
        stack = Stack(fake_api, config, store, service, frontend)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.stop(cancel_jobs=True)
