"""Results that could not be sent before a restart are sent at start; a deleted channel ends that
delivery with a log line instead of retrying forever."""

from __future__ import annotations

import io
import logging

from PIL import Image

from bot.core.jobs import Origin, short_id
from tests.helpers.discord import start_frontend
from tests.helpers.fake_discord import ALICE, BOB, CHANNEL, GONE_CHANNEL, GUILD


def discord_origin(user: int, channel: int, locale: str = "en-US") -> Origin:
    return Origin("discord", str(user), chat_id=str(channel), guild_id=GUILD, locale=locale)


async def test_undelivered_results_are_sent_at_start(make_stack, fake, caplog):
    caplog.set_level(logging.INFO, logger="bot.frontends.discord")
    stack = await make_stack(frontend=False)  # results finish while no Discord client runs
    kept = await stack.service.submit("a fox --steps 2", discord_origin(ALICE, CHANNEL, locale="vi"))
    lost = await stack.service.submit("a fox --steps 2", discord_origin(BOB, GONE_CHANNEL))
    await stack.wait_job(kept.job_id)
    await stack.wait_job(lost.job_id)

    await start_frontend(stack)
    sent = await fake.wait_for("POST", rf"/channels/{CHANNEL}/messages")
    assert sent.json["content"] == f"<@{ALICE}> yêu cầu #{short_id(kept.public_id)} đã xong."
    assert Image.open(io.BytesIO(sent.files[0].data)).format == "PNG"
    assert f"imagebot:reroll:{kept.public_id}" in str(sent.json["components"])
    assert (await stack.wait_delivery(kept.job_id)).delivery == "delivered"
    assert (await stack.wait_delivery(lost.job_id)).delivery == "failed"
    assert any(f"job {lost.job_id}: result not delivered" in r.getMessage() for r in caplog.records)

    # A job nobody follows (queued before the restart) is delivered when it finishes.
    later = await stack.service.submit("a hare --steps 2", discord_origin(ALICE, CHANNEL))
    later_id = short_id(later.public_id)
    sent = await fake.wait_for("POST", rf"/channels/{CHANNEL}/messages", lambda c: later_id in c.json["content"])
    assert sent.json["content"] == f"<@{ALICE}> job #{later_id} is done."
    assert (await stack.wait_delivery(later.job_id)).delivery == "delivered"
    assert len(fake.find("POST", rf"/channels/{CHANNEL}/messages")) == 2  # each result once


async def test_login_is_retried_while_discord_cannot_be_reached(make_stack, fake, caplog, unused_tcp_port):
    """No network at boot (here: an address where nothing listens) is waited out; the bot logs in
    as soon as Discord answers, and the token stays out of the log."""
    import asyncio

    import discord

    from bot.config import Secrets
    from bot.frontends import discord as discord_frontend

    caplog.set_level(logging.INFO, logger="bot.frontends.discord")
    stack = await make_stack(frontend=False)
    discord.http.Route.BASE = f"http://127.0.0.1:{unused_tcp_port}/api/v10"
    stack.frontend = await discord_frontend.start(stack.service, stack.config, Secrets(discord_token="test-token"),
                                                  clock=stack.clock, gateway=False)

    async def warned() -> None:
        while not any("cannot reach Discord" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(warned(), 30)
    assert not stack.frontend.ready.is_set()
    discord.http.Route.BASE = fake.base  # the network is back
    await asyncio.wait_for(stack.frontend.ready.wait(), 30)
    assert fake.find("GET", r"/users/@me")
    assert not [r for r in caplog.records if "test-token" in r.getMessage()]
