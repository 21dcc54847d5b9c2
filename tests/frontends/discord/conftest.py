"""A running stack per test: store, registry, GPU worker thread and service on the tiny model, the
Discord frontend logged in to a local fake Discord (no gateway: interactions are fed in as raw
INTERACTION_CREATE payloads through the client's connection state)."""

from __future__ import annotations

from typing import Any

import discord
import pytest

from tests.helpers.discord import Clock, Stack, start_frontend, stop_stack
from tests.helpers.fake_discord import ADMIN, ADMIN_ROLE, FakeDiscord
from tests.helpers.service import start_service


@pytest.fixture
async def fake():
    server = FakeDiscord()
    await server.start()
    previous = discord.http.Route.BASE
    discord.http.Route.BASE = server.base
    yield server
    discord.http.Route.BASE = previous
    await server.stop()


@pytest.fixture
async def make_stack(tmp_path, models_dir, fake):
    """make_stack(discord={...}, limits={...}, clock=Clock(), frontend=True) -> a running Stack.
    Stacks made one after another share the database: the second is the first after a restart."""
    stacks: list[Stack] = []

    async def make(clock: Clock | None = None, frontend: bool = True, **sections: dict[str, Any]) -> Stack:
        defaults = {"queue": {"batch_window": 0.0}, "discord": {"admin_users": [ADMIN], "admin_roles": [ADMIN_ROLE]}}
        for name, values in sections.items():
            defaults[name] = {**defaults.get(name, {}), **values}
        config, store, _, service = await start_service(tmp_path / "state", models_dir, **defaults)
        stack = Stack(service, store, config, None, clock or Clock(), fake)
        stacks.append(stack)
        if frontend:
            await start_frontend(stack)
        return stack

    yield make
    for stack in stacks:
        await stop_stack(stack)
