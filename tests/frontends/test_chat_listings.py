"""/queue, /history and /model on Discord and on Telegram show the same facts for the same state:
the same jobs in the same states and places, the same models with the same availability.

Both bots run on one service, each through its real library against its fake platform
(tests/helpers/fake_discord.py, fake_telegram.py). One user's jobs are what both chats' users see:
the service handed to the bots answers /queue and /history with that user's jobs."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import discord
import pytest

from bot.config import Secrets
from bot.core.jobs import Origin, short_id
from bot.frontends import discord as discord_frontend
from bot.frontends import telegram as telegram_frontend
from tests.helpers.discord import callback
from tests.helpers.fake_discord import FakeDiscord, command
from tests.helpers.fake_telegram import FakeBotApi
from tests.helpers.models import add_pipeline_variant
from tests.helpers.service import start_service, stop_service
from tests.helpers.telegram import ALICE, TOKEN, message_update, replied_to

PAINTER = Origin("web", "painter", chat_id="web")


class OnePainter:
    """The service, with every chat user's queue and history being PAINTER's."""

    def __init__(self, service: Any) -> None:
        self._service = service

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    async def queue_of(self, origin: Origin) -> Any:
        return await self._service.queue_of(PAINTER)

    async def history(self, origin: Origin, limit: int = 20) -> Any:
        return await self._service.history(PAINTER, limit)


@pytest.fixture
async def both(tmp_path, models_dir, tiny_pipeline_dir):
    """(service, ask_discord, ask_telegram): the asks send a command and return the bot's answer."""
    add_pipeline_variant(models_dir, "off", tiny_pipeline_dir)
    (models_dir / "cracked").mkdir()
    (models_dir / "cracked" / "variant.toml").write_text('kind = "no such kind"\n', encoding="utf-8")
    fake_discord, fake_telegram = FakeDiscord(), FakeBotApi(TOKEN)
    await fake_discord.start()
    await fake_telegram.start()
    previous_base, discord.http.Route.BASE = discord.http.Route.BASE, fake_discord.base
    config, store, _, service = await start_service(
        tmp_path / "state", models_dir, limits={"max_steps": 500}, queue={"batch_window": 0.0},
        variants={"off": {"enabled": False}}, telegram={"base_url": fake_telegram.base_url})
    shared = OnePainter(service)
    dc = await discord_frontend.start(shared, config, Secrets(discord_token="test-token"), gateway=False)
    await asyncio.wait_for(dc.ready.wait(), 30)
    tg = await telegram_frontend.start(shared, config, Secrets(telegram_token=TOKEN))

    async def ask_discord(name: str) -> str:
        payload = command(name)
        dc.client._connection.parse_interaction_create(payload)
        return (await fake_discord.wait_for("POST", callback(payload))).json["data"]["content"]

    async def ask_telegram(name: str) -> str:
        update = message_update(fake_telegram, ALICE, f"/{name}")
        fake_telegram.feed(update)
        asked = update["message"]["message_id"]
        return (await fake_telegram.wait_for("sendMessage", lambda c: replied_to(c) == asked))[-1].params["text"]

    yield service, ask_discord, ask_telegram
    await dc.stop()
    await tg.stop()
    await stop_service(service, store)
    discord.http.Route.BASE = previous_base
    await fake_telegram.close()
    await fake_discord.stop()


# --- the facts each platform's text shows ---------------------------------------------------------------

def discord_queue(text: str) -> list[tuple[str, str, int | None]]:
    """(job, state, place in line) of each line of Discord's /queue."""
    facts = []
    for line in text.splitlines():
        if found := re.match(r"#(\w+): waiting, #(\d+) in line", line):
            facts.append((found[1], "waiting", int(found[2])))
        elif found := re.match(r"#(\w+): waiting\.", line):
            facts.append((found[1], "waiting", None))
        elif found := re.match(r"#(\w+): step \d+ of \d+", line):
            facts.append((found[1], "running", None))
        elif found := re.match(r"Job #(\w+) is starting", line):
            facts.append((found[1], "starting", None))
        else:
            raise AssertionError(f"not a queue line: {line!r}")
    return facts


def telegram_queue(text: str) -> list[tuple[str, str, int | None]]:
    facts = []
    for line in text.splitlines()[1:]:  # after the title
        if found := re.match(r"#(\w+) waiting, position (\d+):", line):
            facts.append((found[1], "waiting", int(found[2])))
        elif found := re.match(r"#(\w+) waiting:", line):
            facts.append((found[1], "waiting", None))
        elif found := re.match(r"#(\w+) running, step \d+ of \d+:", line):
            facts.append((found[1], "running", None))
        elif found := re.match(r"#(\w+) starting:", line):
            facts.append((found[1], "starting", None))
        else:
            raise AssertionError(f"not a queue line: {line!r}")
    return facts


def discord_history(text: str) -> list[tuple[str, str]]:
    return [(found[1], found[2]) for found in re.finditer(r"^Job #(\w+) (\w+): ", text, re.M)]


def telegram_history(text: str) -> list[tuple[str, str]]:
    return [(found[1], found[2]) for found in re.finditer(r"^#(\w+) (\w+) · ", text, re.M)]


def discord_models(text: str) -> tuple[dict[str, tuple[str, str]], str]:
    """({model: (availability, family)}, the default) of Discord's /model list."""
    models, default = {}, None
    for found in re.finditer(r"^• \*\*([\w.-]+)\*\*(?: · ([^(:]+))?(?: \((.*?)\))?(?::|$)", text, re.M):
        tags = found[3] or ""
        models[found[1]] = ("broken" if "cannot be used" in tags else "disabled" if "disabled" in tags
                            else "usable", found[2] or "")
        if tags.startswith("default"):
            default = found[1]
    return models, default


def telegram_models(text: str) -> tuple[dict[str, tuple[str, str]], str]:
    models = {}
    for found in re.finditer(r"^• ([\w.-]+)(?: \(([^)]*)\))?: (.*)$", text, re.M):
        rest = found[3]
        models[found[1]] = ("broken" if rest.startswith("cannot be used") else "disabled"
                            if rest.endswith("(disabled)") else "usable", found[2] or "")
    return models, re.search(r"this chat uses ([\w.-]+);", text)[1]


# --- the test -----------------------------------------------------------------------------------------------

async def wait_running(service, job_id: int) -> None:
    async def poll() -> None:
        while not (await service.status(job_id)).step:
            await asyncio.sleep(0.02)
    await asyncio.wait_for(poll(), 90)


async def test_queue_history_and_models_show_the_same_facts_on_discord_and_telegram(both):
    service, ask_discord, ask_telegram = both
    done = await service.submit("a fox --steps 2", PAINTER)
    await service.wait_finished(done.job_id)
    slow = await service.submit("a very slow lighthouse --steps 400 --size 32x32", PAINTER)
    await wait_running(service, slow.job_id)
    waiting = await service.submit("a quick cat --steps 2", PAINTER)
    dropped = await service.submit("a hare --steps 2", PAINTER)
    await service.cancel(dropped.job_id, PAINTER)
    ids = {name: short_id((await service.job(s.job_id)).public_id)
           for name, s in (("done", done), ("slow", slow), ("waiting", waiting), ("dropped", dropped))}

    queue = discord_queue(await ask_discord("queue"))
    assert queue == telegram_queue(await ask_telegram("queue"))
    assert queue == [(ids["slow"], "running", None), (ids["waiting"], "waiting", 1)]

    history = discord_history(await ask_discord("history"))
    assert history == telegram_history(await ask_telegram("history"))
    assert history == [
        (ids["dropped"], "cancelled"), (ids["waiting"], "waiting"), (ids["slow"], "running"), (ids["done"], "done")]

    models = discord_models(await ask_discord("model"))
    assert models == telegram_models(await ask_telegram("model"))
    assert models == ({"cracked": ("broken", ""), "demo": ("usable", "Stable Diffusion 1.x"),
                       "off": ("disabled", "Stable Diffusion 1.x")}, "demo")
