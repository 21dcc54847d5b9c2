"""Following Telegram jobs: progress messages while they run, results when they end.

One subscription to every Telegram job's events. Progress events poke the job's status message
(see progress.py); a finished job gets one delivery task that sends the result and records it
with `service.mark_delivered`. Network trouble and flood limits are retried with back-off for as
long as the bot runs; a result still pending when it stops is sent at the next start
(`service.undelivered`). A chat that is gone or has blocked the bot ends that delivery with a log
line, never a loop.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from telegram import Bot, InputMediaPhoto, Message, ReplyParameters
from telegram.error import (BadRequest, ChatMigrated, Forbidden, InvalidToken, NetworkError, RetryAfter,
                            TelegramError)

from bot.config import Config
from bot.core.jobs import DELIVERY_PENDING, DONE, Job
from bot.core.service import Service
from bot.frontends.telegram import keyboards
from bot.frontends.telegram.errors import loggable
from bot.frontends.telegram.media import photo_bytes
from bot.frontends.telegram.progress import Progress, delete_quietly
from bot.frontends.telegram.texts import caption, job_error, t

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0
ALBUM_SIZE = 10  # photos per media group


class Delivery:
    def __init__(self, bot: Bot, service: Service, config: Config) -> None:
        self.bot = bot
        self.service = service
        self.config = config
        self.outputs = config.storage.outputs_path()
        self._progress: dict[int, Progress] = {}
        self._sending: dict[int, asyncio.Task] = {}
        self._events = None
        self._listener: asyncio.Task | None = None

    async def start(self) -> None:
        # Subscribe before looking for undelivered results, so a job finishing in between is
        # seen one way or the other (a second delivery of the same job is skipped).
        self._events = self.service.subscribe(None, "telegram")
        self._listener = asyncio.create_task(self._listen(), name="telegram-events")
        pending = await self.service.undelivered("telegram")
        if pending:
            log.info("delivering %d result(s) left from before the restart", len(pending))
        for job in pending:
            self.deliver(job.id)

    async def stop(self) -> None:
        if self._events is not None:
            self._events.close()
        tasks = [task for task in (self._listener, *self._sending.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for progress in self._progress.values():
            await progress.close()
        self._progress.clear()

    async def _listen(self) -> None:
        async for event in self._events:
            try:
                await self._on_event(event)
            except Exception:  # one bad event must not end the following of every job
                log.exception("telegram: could not handle event %s", event)

    async def _on_event(self, event: dict) -> None:
        job_id = event["job"]
        if event["type"] in ("done", "failed", "cancelled"):
            self.deliver(job_id)
            return
        progress = self._progress.get(job_id)
        if progress is None:
            job = await self.service.job(job_id)
            if job.finished or not job.origin.message_ids.get("status"):
                return
            telegram = self.config.telegram
            private = int(job.origin.chat_id) > 0  # Telegram: users are positive ids, groups negative
            interval = telegram.edit_interval_private if private else telegram.edit_interval_group
            progress = self._progress[job_id] = Progress(self.bot, self.service, job, interval, telegram.previews)
        progress.poke()

    def deliver(self, job_id: int) -> None:
        """Send a finished job's result (once, however often this is called)."""
        if job_id in self._sending:
            return
        task = asyncio.create_task(self._guarded(job_id), name=f"telegram-deliver-{job_id}")
        self._sending[job_id] = task
        task.add_done_callback(lambda _: self._sending.pop(job_id, None))

    async def _guarded(self, job_id: int) -> None:
        try:
            await self._deliver(job_id)
        except asyncio.CancelledError:
            raise
        except Exception:  # e.g. the store closed under it: the result stays pending for the next start
            log.exception("job %d: delivery stopped", job_id)

    async def _deliver(self, job_id: int) -> None:
        progress = self._progress.pop(job_id, None)
        if progress is not None:
            await progress.close()
        job = await self.service.job(job_id)
        if job.delivery != DELIVERY_PENDING:
            return
        result = _Result(self.bot, job, self.outputs, progress)
        delay = FIRST_RETRY_SECONDS
        while True:
            try:
                await result.send()
            except ChatMigrated as error:  # the group became a supergroup with a new id
                if result.chat_id != error.new_chat_id:
                    result.chat_id = error.new_chat_id
                    continue
                log.warning("job %d: chat %s keeps moving, giving up", job_id, result.chat_id)
                await self.service.mark_delivered(job_id, False)
                return
            except (Forbidden, BadRequest, InvalidToken) as error:
                log.warning("job %d: cannot deliver to chat %s, giving up: %s", job_id, result.chat_id,
                            loggable(error))
                await self.service.mark_delivered(job_id, False)
                return
            except RetryAfter as error:
                wait = max(delay, _seconds(error.retry_after))
                log.warning("job %d: flood limit while delivering; retrying in %.0f s", job_id, wait)
                await asyncio.sleep(wait)
                continue
            except NetworkError as error:
                log.warning("job %d: delivery failed (%s); retrying in %.0f s", job_id, loggable(error), delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_SECONDS)
                continue
            except (TelegramError, OSError) as error:  # e.g. the image file was removed
                log.exception("job %d: cannot deliver, giving up: %s", job_id, error)
                await self.service.mark_delivered(job_id, False)
                return
            await self.service.mark_delivered(job_id)
            log.info("job %d delivered to chat %s", job_id, result.chat_id)
            return


class _Result:
    """Sending one finished job. Parts already sent are not sent again when a retry follows."""

    def __init__(self, bot: Bot, job: Job, outputs: Path, progress: Progress | None) -> None:
        self.bot = bot
        self.job = job
        self.outputs = outputs
        origin = job.origin
        self.chat_id = int(origin.chat_id)
        self.locale = origin.locale
        self.reply_to: int | None = origin.message_ids.get("reply_to")
        self.thread: int | None = origin.message_ids.get("thread")
        if progress is not None:  # it knows the status message, which may have become a preview photo
            self.status_id, self.status_is_photo = progress.message_id, progress.is_photo
        else:
            self.status_id, self.status_is_photo = origin.message_ids.get("status"), False
        self._photos: list[Message] | None = None
        self._keyboard_sent = False

    async def send(self) -> None:
        if self.job.status == DONE:
            await self._send_images()
            await delete_quietly(self.bot, self.chat_id, self.status_id)
            self.status_id = None
        else:
            await self._send_outcome(job_error(self.job, self.locale))

    async def _send_images(self) -> None:
        job = self.job
        if self._photos is None:
            photos = [await asyncio.to_thread(photo_bytes, self.outputs / image.file) for image in job.images]
            text = caption(job, self.locale)
            if len(photos) == 1:
                message = await self.bot.send_photo(
                    self.chat_id, photos[0], caption=text, filename=f"job{job.id}.jpg",
                    reply_markup=keyboards.single_result(job.id, self.locale), **self._reply(self.reply_to))
                self._photos, self._keyboard_sent = [message], True
            else:
                sent: list[Message] = []
                for start in range(0, len(photos), ALBUM_SIZE):
                    media = [InputMediaPhoto(data, filename=f"job{job.id}-{start + i}.jpg",
                                             caption=text if start + i == 0 else None)
                             for i, data in enumerate(photos[start:start + ALBUM_SIZE])]
                    sent += await self.bot.send_media_group(self.chat_id, media, **self._reply(self.reply_to))
                self._photos = sent
        if not self._keyboard_sent:  # albums cannot carry buttons: they go in a message below
            ids = [message.message_id for message in self._photos]
            await self.bot.send_message(
                self.chat_id, t("tg_album_actions", self.locale, job=job.id, count=len(ids)),
                reply_markup=keyboards.album_result(job.id, len(job.images), ids, self.locale),
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
