"""Gateway shards: the bot connects as many shards as Discord recommends for its servers (here two,
from the fake's `GET /gateway/bot`), in one process, and answers slash commands on each of them.
The real discord.py AutoShardedClient against the fake gateway in tests/helpers/fake_discord.py."""

import asyncio

from bot.config import Secrets
from bot.frontends import discord as discord_frontend
from tests.helpers.discord import callback
from tests.helpers.fake_discord import GUILD, command

OTHER_GUILD = GUILD + (1 << 22)  # the next shard over: (id >> 22) % 2 differs


def in_guild(payload: dict, guild: int) -> dict:
    """The same command, sent from another server."""
    payload["guild_id"] = payload["data"]["guild_id"] = payload["channel"]["guild_id"] = str(guild)
    payload["authorizing_integration_owners"] = {"0": str(guild)}
    return payload


async def test_the_bot_runs_the_shards_discord_recommends_and_answers_on_each(make_stack, fake):
    fake.shards = 2
    fake.guilds = [GUILD, OTHER_GUILD]
    stack = await make_stack(frontend=False)
    stack.frontend = await discord_frontend.start(stack.service, stack.config, Secrets(discord_token="test-token"),
                                                  clock=stack.clock)
    client = stack.frontend.client
    await asyncio.wait_for(stack.frontend.ready.wait(), 30)
    await asyncio.wait_for(client.wait_until_ready(), 60)
    assert sorted(fake.identified) == [[0, 2], [1, 2]]  # two shards, one connection each
    assert client.shard_count == 2
    shards = {guild.id: guild.shard_id for guild in client.guilds}
    assert shards == {GUILD: (GUILD >> 22) % 2, OTHER_GUILD: (OTHER_GUILD >> 22) % 2}
    for guild in (GUILD, OTHER_GUILD):
        payload = in_guild(command("queue"), guild)
        await fake.dispatch(shards[guild], "INTERACTION_CREATE", payload)
        answer = await fake.wait_for("POST", callback(payload), timeout=30)
        assert answer.json["type"] in (4, 5)  # answered (or deferred) over REST, from either shard


async def test_a_set_shard_count_is_used_as_is(make_stack, fake, monkeypatch):
    import discord
    import yarl

    # With a count set, discord.py goes straight to Discord's gateway address: point it at the fake.
    monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url))
    fake.shards = 1  # what Discord would recommend; the setting wins
    stack = await make_stack(frontend=False, discord={"shards": 2})
    stack.frontend = await discord_frontend.start(stack.service, stack.config, Secrets(discord_token="test-token"),
                                                  clock=stack.clock)
    await asyncio.wait_for(stack.frontend.client.wait_until_ready(), 60)
    assert sorted(fake.identified) == [[0, 2], [1, 2]] and stack.frontend.client.shard_count == 2
