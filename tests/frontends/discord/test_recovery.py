"""Results that could not be sent before a restart are sent at start; a deleted channel ends that
delivery with a log line instead of retrying forever."""

from __future__ import annotations

import io
import logging

from PIL import Image

from bot.core.jobs import Origin
from tests.frontends.discord.conftest import start_frontend
from tests.frontends.discord.fake_discord import ALICE, BOB, CHANNEL, GONE_CHANNEL, GUILD


def discord_origin(user: int, channel: int, locale: str = "en-US") -> Origin:
    return Origin("discord", str(user), chat_id=str(channel), message_ids={"guild_id": GUILD}, locale=locale)


async def test_undelivered_results_are_sent_at_start(make_stack, fake, caplog):
    caplog.set_level(logging.INFO, logger="bot.frontends.discord")
    stack = await make_stack(frontend=False)  # results finish while no Discord client runs
    kept = await stack.service.submit("a fox --steps 2", discord_origin(ALICE, CHANNEL, locale="vi"))
    lost = await stack.service.submit("a fox --steps 2", discord_origin(BOB, GONE_CHANNEL))
    await stack.wait_job(kept.job_id)
    await stack.wait_job(lost.job_id)

    await start_frontend(stack)
    sent = await fake.wait_for("POST", rf"/channels/{CHANNEL}/messages")
    assert sent.json["content"] == f"<@{ALICE}> yêu cầu #1 đã xong."
    assert Image.open(io.BytesIO(sent.files[0].data)).format == "PNG"
    assert "imagebot:reroll:1" in str(sent.json["components"])
    assert (await stack.wait_delivery(kept.job_id)).delivery == "delivered"
    assert (await stack.wait_delivery(lost.job_id)).delivery == "failed"
    assert any(f"job {lost.job_id}: result not delivered" in r.getMessage() for r in caplog.records)

    # A job nobody follows (queued before the restart) is delivered when it finishes.
    later = await stack.service.submit("a hare --steps 2", discord_origin(ALICE, CHANNEL))
    sent = await fake.wait_for("POST", rf"/channels/{CHANNEL}/messages", lambda c: "#3" in c.json["content"])
    assert sent.json["content"] == f"<@{ALICE}> job #3 is done."
    assert (await stack.wait_delivery(later.job_id)).delivery == "delivered"
    assert len(fake.find("POST", rf"/channels/{CHANNEL}/messages")) == 2  # each result once
