"""The Discord frontend under test: a running stack with the frontend logged in to the fake Discord
(tests/helpers/fake_discord.py), the clock it measures time with, and what the tests look for in
its answers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from bot.config import Config, Secrets
from bot.core.jobs import FINISHED, Job, Origin
from bot.core.service import Service
from bot.core.store import Store
from bot.frontends import discord as discord_frontend
from tests.helpers.fake_discord import APP_ID, FakeDiscord
from tests.helpers.service import stop_service

TEARDOWN_ADMIN = Origin("web", "teardown", chat_id="web", is_admin=True)


class Clock:
    """What the frontend measures the 15-minute token window and the edit throttle with.
    `step` seconds pass on every reading; `advance()` jumps ahead."""

    def __init__(self, step: float = 0.0) -> None:
        self.now = 1_000.0
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Stack:
    service: Service
    store: Store
    config: Config
    frontend: Any
    clock: Clock
    fake: FakeDiscord
    stopped: bool = False

    def dispatch(self, payload: dict) -> None:
        """Hand a raw INTERACTION_CREATE to discord.py as the gateway would."""
        self.frontend.client._connection.parse_interaction_create(payload)

    async def wait_job(self, job_id: int, timeout: float = 120.0) -> Job:
        async def poll() -> Job:
            while not (job := await self.service.job(job_id)).finished:
                await asyncio.sleep(0.02)
            return job
        return await asyncio.wait_for(poll(), timeout)

    async def wait_delivery(self, job_id: int, timeout: float = 60.0) -> Job:
        async def poll() -> Job:
            while (job := await self.service.job(job_id)).delivery == "pending":
                await asyncio.sleep(0.02)
            return job
        return await asyncio.wait_for(poll(), timeout)

    async def wait_running(self, job_id: int, timeout: float = 120.0) -> None:
        async def poll() -> None:
            while True:
                view = await self.service.status(job_id)
                assert view.job.status not in FINISHED, view.job
                if view.step:
                    return
                await asyncio.sleep(0.02)
        await asyncio.wait_for(poll(), timeout)


async def start_frontend(stack: Stack) -> None:
    stack.frontend = await discord_frontend.start(stack.service, stack.config, Secrets(discord_token="test-token"),
                                                  clock=stack.clock, gateway=False)
    await asyncio.wait_for(stack.frontend.ready.wait(), 30)


async def stop_stack(stack: Stack) -> None:
    """A clean shutdown, as `imagebot serve` does it; safe to call twice."""
    if stack.frontend is not None:
        await stack.frontend.stop()
        stack.frontend = None
    if stack.stopped:
        return
    stack.stopped = True
    await stop_service(stack.service, stack.store)


# --- what the tests look for in Discord's requests ------------------------------------------------

EPHEMERAL = 64


def callback(payload: dict) -> str:
    return rf"/interactions/{payload['id']}/{payload['token']}/callback"


def original(payload: dict) -> str:
    return rf"/webhooks/{APP_ID}/{payload['token']}/messages/@original"


def has_result(call) -> bool:
    return bool(call.json and call.json.get("embeds"))
