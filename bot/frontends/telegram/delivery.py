"""Following Telegram jobs: the Telegram side of the shared delivery loop (bot/frontends/delivery.py).

Progress events poke the job's status message (see status_message.py); a finished job's result is sent
by `_Result`, which remembers what already went out so a retry does not send it twice. Telegram's
errors become the loop's: network trouble and flood limits are `RetryLater` (tried again with
back-off while the bot runs, and at the next start), a chat that is gone or has blocked the bot is
`Undeliverable` (a log line, never a loop). A group that became a supergroup is followed to its new id.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from telegram import Bot, InputMediaPhoto, Message, ReplyParameters
from telegram.error import (BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter,
                            TelegramError)

from bot.config import Config
from bot.core.jobs import DONE, Job, short_id
from bot.core.service import Service
from bot.frontends.delivery import DeliveryLoop, RetryLater, Undeliverable
from bot.frontends.telegram import keyboards
from bot.frontends.telegram.errors import loggable
from bot.frontends.telegram.media import photo_bytes
from bot.frontends.telegram.status_message import StatusMessage, delete_quietly
from bot.frontends.telegram.strings import render
from bot.frontends.telegram.texts import caption, failure_text

log = logging.getLogger(__name__)

PLATFORM = "telegram"
ALBUM_SIZE = 10  # photos per media group


class Delivery:
    """The `ChatPlatform` of Telegram: status messages while jobs wait and run, results when they end."""

    def __init__(self, bot: Bot, service: Service, config: Config) -> None:
        self.bot = bot
        self.service = service
        self.config = config
        self.outputs = config.storage.outputs_path()
        self.loop = DeliveryLoop(service, PLATFORM, self)
        self._status: dict[int, StatusMessage] = {}
        self._results: dict[int, _Result] = {}

    async def start(self) -> None:
        await self.loop.start()

    async def stop(self) -> None:
        await self.loop.stop()
        for status in self._status.values():
            await status.close()
        self._status.clear()

    # --- progress ----------------------------------------------------------------------------------

    def follows(self, job_id: int) -> bool:
        return job_id in self._status

    async def adopt(self, job_id: int) -> bool:
        """Follow a job whose status message the store knows (its id travels in the Origin), also
        one queued before a restart."""
        job = await self.service.job(job_id)
        if job.finished or not job.origin.reply.get("status"):
            return False
        telegram = self.config.telegram
        private = int(job.origin.chat_id) > 0  # Telegram: users are positive ids, groups negative
        interval = telegram.edit_interval_private if private else telegram.edit_interval_group
        self._status[job_id] = StatusMessage(self.bot, self.service, job, interval, telegram.previews)
        return True

    async def on_progress(self, job_id: int, event: dict) -> None:
        self._status[job_id].poke()  # what to show is read when the throttle lets an edit through

    # --- results -----------------------------------------------------------------------------------

    async def send_result(self, job: Job) -> None:
        result = self._results.get(job.id)
        if result is None:  # the first try: the status message stops showing progress
            status = self._status.pop(job.id, None)
            if status is not None:
                await status.close()
            result = self._results[job.id] = _Result(self.bot, job, self.outputs, status)
        try:
            await result.send()
        except (Forbidden, BadRequest, InvalidToken) as error:  # BadRequest first: it is a NetworkError
            raise Undeliverable(f"cannot deliver to chat {result.chat_id}: {loggable(error)}") from None
        except RetryAfter as error:
            raise RetryLater("flood limit", after=_seconds(error.retry_after)) from None
        except NetworkError as error:
            raise RetryLater(loggable(error)) from None
        except (TelegramError, OSError) as error:  # e.g. the image file was removed
            raise Undeliverable(f"cannot deliver to chat {result.chat_id}: {loggable(error)}") from None

    async def release(self, job_id: int) -> None:
        self._results.pop(job_id, None)
        status = self._status.pop(job_id, None)
        if status is not None:
            await status.close()


class _Result:
    """Sending one finished job. Parts already sent are not sent again when a retry follows."""

    def __init__(self, bot: Bot, job: Job, outputs: Path, status: StatusMessage | None) -> None:
        self.bot = bot
        self.job = job
        self.outputs = outputs
        origin = job.origin
        self.chat_id = int(origin.chat_id)
        self.locale = origin.locale
        self.reply_to: int | None = origin.reply.get("reply_to")
        self.thread: int | None = origin.reply.get("thread")
        if status is not None:  # it knows the status message, which may have become a preview photo
            self.status_id, self.status_is_photo = status.message_id, status.is_photo
        else:
            self.status_id, self.status_is_photo = origin.reply.get("status"), False
        self._photos: list[Message] | None = None
        self._keyboard_sent = False

    async def send(self) -> None:
        """Send what has not gone out yet, following a group that became a supergroup (new chat id)."""
        while True:
            try:
                await self._send()
                return
            except ChatMigrated as error:
                if self.chat_id == error.new_chat_id:
                    raise Undeliverable(f"chat {self.chat_id} keeps moving") from None
                self.chat_id = error.new_chat_id

    async def _send(self) -> None:
        if self.job.status == DONE:
            await self._send_images()
            await delete_quietly(self.bot, self.chat_id, self.status_id)
            self.status_id = None
        else:
            await self._send_outcome(failure_text(self.job, self.locale))

    async def _send_images(self) -> None:
        job = self.job
        if self._photos is None:
            photos = [await asyncio.to_thread(photo_bytes, self.outputs / image.file) for image in job.images]
            text = caption(job, self.locale)
            if len(photos) == 1:
                message = await self.bot.send_photo(
                    self.chat_id, photos[0], caption=text, filename=f"job-{short_id(job.public_id)}.jpg",
                    reply_markup=keyboards.single_result(job.public_id, self.locale), **self._reply(self.reply_to))
                self._photos, self._keyboard_sent = [message], True
            else:
                sent: list[Message] = []
                for start in range(0, len(photos), ALBUM_SIZE):
                    media = [InputMediaPhoto(data, filename=f"job-{short_id(job.public_id)}-{start + i}.jpg",
                                             caption=text if start + i == 0 else None)
                             for i, data in enumerate(photos[start:start + ALBUM_SIZE])]
                    sent += await self.bot.send_media_group(self.chat_id, media, **self._reply(self.reply_to))
                self._photos = sent
        if not self._keyboard_sent:  # albums cannot carry buttons: they go in a message below
            ids = [message.message_id for message in self._photos]
            await self.bot.send_message(
                self.chat_id, render("tg_album_actions", self.locale, job=short_id(job.public_id), count=len(ids)),
                reply_markup=keyboards.album_result(job.public_id, len(job.images), ids, self.locale),
                **self._reply(ids[0]))
            self._keyboard_sent = True

    async def _send_outcome(self, text: str) -> None:
        """A failed or cancelled job: the status message becomes the reason, or a reply carries it."""
        if self.status_id is not None and not self.status_is_photo:
            try:
                await self.bot.edit_message_text(text, chat_id=self.chat_id, message_id=self.status_id)
                return
            except BadRequest as error:  # the status message is gone: say it in a new one
                log.info("job %d: status message not editable (%s); replying instead", self.job.id, loggable(error))
        await delete_quietly(self.bot, self.chat_id, self.status_id)
        self.status_id = None
        await self.bot.send_message(self.chat_id, text, **self._reply(self.reply_to))

    def _reply(self, message_id: int | None) -> dict:
        return reply_kwargs(message_id, self.thread)


def reply_kwargs(message_id: int | None, thread: int | None) -> dict:
    """Reply to a message if it still exists (sent anyway if it was deleted), in its forum topic."""
    kwargs: dict = {"message_thread_id": thread}
    if message_id is not None:
        kwargs["reply_parameters"] = ReplyParameters(message_id, allow_sending_without_reply=True)
    return kwargs


async def send_png(bot: Bot, job: Job, outputs: Path, chat_id: int, reply_to: int | None,
                   thread: int | None) -> None:
    """The lossless PNG files of a result, as documents (Telegram recompresses photos)."""
    for image in job.images:
        data = await asyncio.to_thread((outputs / image.file).read_bytes)
        await bot.send_document(chat_id, data, filename=image.file, **reply_kwargs(reply_to, thread))


def _seconds(value) -> float:
    return value.total_seconds() if hasattr(value, "total_seconds") else float(value)
