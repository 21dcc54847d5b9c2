"""The Telegram frontend under test: the users and chats the tests write as, a running stack (the
service and the real python-telegram-bot Application against the fake Bot API,
tests/helpers/fake_telegram.py), the raw updates they send and what they look for in the bot's calls."""

from __future__ import annotations

import asyncio
import io
import itertools
import time
from dataclasses import dataclass
from typing import Any

from PIL import Image

from bot.config import Config
from bot.core.errors import UserError
from bot.core.jobs import Job, Origin
from bot.core.service import Service
from bot.core.store import Store
from tests.helpers.fake_telegram import Call, FakeBotApi

TOKEN = "123456789:AAE-test-token-that-must-never-be-logged"
ALICE = {"id": 1001, "is_bot": False, "first_name": "Alice", "username": "alice", "language_code": "en"}
BOB = {"id": 1002, "is_bot": False, "first_name": "Bob", "username": "bob", "language_code": "en-US"}
LAN = {"id": 1003, "is_bot": False, "first_name": "Lan", "language_code": "vi"}
ROOT = {"id": 9001, "is_bot": False, "first_name": "Root", "username": "root", "language_code": "en"}
GROUP = {"id": -1001234567890, "type": "supergroup", "title": "Art club"}
TEARDOWN = Origin("telegram", "teardown", is_admin=True)
_query_ids = itertools.count(1)


def private(user: dict) -> dict:
    return {"id": user["id"], "type": "private", "first_name": user["first_name"]}


@dataclass
class Stack:
    server: FakeBotApi
    config: Config
    store: Store
    service: Service
    frontend: Any
    stopped: bool = False

    def send(self, user: dict, text: str | None = None, chat: dict | None = None, edited: bool = False,
             **extra: Any) -> int:
        """A user writes in a chat; returns the message id."""
        update = message_update(self.server, user, text, chat, edited, **extra)
        self.server.feed(update)
        return next(iter(update.values()))["message_id"]

    def press(self, user: dict, message: dict, data: str) -> str:
        """A user presses an inline button under one of the bot's messages."""
        query_id = str(next(_query_ids))
        self.server.feed({"callback_query": {"id": query_id, "from": user, "chat_instance": "42",
                                             "message": message, "data": data}})
        return query_id

    async def reply_to(self, message_id: int, method: str = "sendMessage", **kw: Any) -> Call:
        return (await self.server.wait_for(method, lambda c: replied_to(c) == message_id, **kw))[-1]

    async def status_text(self, status_id: int, fragment: str) -> Call:
        """Wait for the status message (by id) to be edited to show `fragment`."""
        def shows(call: Call) -> bool:
            return int(call.params.get("message_id", 0)) == status_id and fragment in call.params.get("text", "")
        return (await self.server.wait_for("editMessageText", shows))[-1]

    async def answer(self, query_id: str) -> Call:
        return (await self.server.wait_for("answerCallbackQuery",
                                           lambda c: c.params["callback_query_id"] == query_id))[0]

    async def jobs_of(self, user: dict) -> list[Job]:
        return await self.service.history(Origin("telegram", str(user["id"])), 50)

    async def wait_job(self, user: dict, count: int = 1, timeout: float = 90.0) -> list[Job]:
        async def poll() -> list[Job]:
            while len(jobs := await self.jobs_of(user)) < count:
                await asyncio.sleep(0.02)
            return sorted(jobs, key=lambda j: j.id)
        return await asyncio.wait_for(poll(), timeout)

    async def wait_delivery(self, job_id: int, state: str = "delivered", timeout: float = 120.0) -> Job:
        async def poll() -> Job:
            while (job := await self.service.job(job_id)).delivery != state:
                await asyncio.sleep(0.02)
            return job
        return await asyncio.wait_for(poll(), timeout)

    async def wait_running(self, job_id: int, timeout: float = 90.0) -> None:
        async def poll() -> None:
            while (view := await self.service.status(job_id)).step is None:
                assert not view.job.finished, view.job
                await asyncio.sleep(0.02)
        await asyncio.wait_for(poll(), timeout)

    async def stop(self, cancel_jobs: bool = False) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.frontend.stop()
        if cancel_jobs:  # stop whatever is left at its next step, so stop() does not wait for it
            for job in [*await self.store.running(), *await self.store.queued()]:
                try:
                    await self.service.cancel(job.id, TEARDOWN)
                except UserError:
                    pass
        worker = self.service.executor._thread
        await self.service.stop()
        await self.store.close()
        # A restart is a new process: let this one's worker thread end (it stops at its next step)
        # before the next stack loads models in the same process.
        if worker is not None:
            await asyncio.to_thread(worker.shutdown, True)


def message_update(server: FakeBotApi, user: dict, text: str | None = None, chat: dict | None = None,
                   edited: bool = False, **extra: Any) -> dict[str, Any]:
    """A raw update (without update_id) of a new or edited message, as Telegram sends it."""
    message = {"message_id": server.next_message_id(), "date": int(time.time()), "chat": chat or private(user),
               "from": user, **extra}
    if text is not None:
        message["text"] = text
        if text.startswith("/"):
            message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    if edited:
        message["edit_date"] = int(time.time())
    return {"edited_message" if edited else "message": message}


def replied_to(call: Call) -> int | None:
    reply = call.params.get("reply_parameters")
    return int(reply["message_id"]) if isinstance(reply, dict) else None


def buttons(call: Call) -> dict[str, str]:
    """Button label -> callback data of the keyboard a call sent."""
    markup = call.params.get("reply_markup") or {}
    return {b["text"]: b["callback_data"] for row in markup.get("inline_keyboard", []) for b in row}


def is_result(call: Call) -> bool:
    """A result photo (not a progress preview, whose only button is Cancel)."""
    return any(data.startswith("r:") for data in buttons(call).values())


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image
