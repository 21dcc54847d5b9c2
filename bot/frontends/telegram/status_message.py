"""The status message of one job: "queued #N", then its progress and live preview.

Edits are throttled (one per `interval` seconds: Telegram allows about 20 messages a minute in a
group) and never repeat what the message already shows. What to show is read from the service
when an edit is due, so bursts of step events collapse into one edit of the latest state.
"""

from __future__ import annotations

import asyncio
import logging

from telegram import Bot, InputMediaPhoto, ReplyParameters
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter, TelegramError

from bot.core.jobs import Job
from bot.core.service import Service
from bot.frontends.telegram import keyboards
from bot.frontends.telegram.errors import loggable
from bot.frontends.telegram.texts import MAX_CAPTION, status_line
from bot.frontends.text import clip

log = logging.getLogger(__name__)


class StatusMessage:
    def __init__(self, bot: Bot, service: Service, job: Job, interval: float, previews: bool) -> None:
        self.bot = bot
        self.service = service
        self.job_id = job.id
        self.public_id = job.public_id  # for its cancel button
        self.chat_id = int(job.origin.chat_id)
        self.locale = job.origin.locale
        reply = job.origin.reply
        self.message_id: int | None = reply.get("status")
        self.reply_to: int | None = reply.get("reply_to")
        self.thread: int | None = reply.get("thread")
        self.is_photo = False  # the status becomes a photo message once there is a preview to show
        self.interval = interval
        self.previews = previews
        self._text: str | None = None
        self._preview: bytes | None = None
        self._last_edit = float("-inf")
        self._wanted = asyncio.Event()
        self._task: asyncio.Task | None = None

    def poke(self) -> None:
        """Something changed: update the message as soon as the throttle allows."""
        self._wanted.set()
        if self._task is None and self.message_id is not None:
            self._task = asyncio.create_task(self._run(), name=f"telegram-progress-{self.job_id}")

    async def close(self) -> None:
        """Stop editing (the job has finished, or the bot stops)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.message_id is not None:
            await self._wanted.wait()
            delay = self._last_edit + self.interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            self._wanted.clear()
            try:
                await self._update()
            except (Forbidden, BadRequest, InvalidToken) as error:
                # The chat or the message is gone, or the bot was removed: stop editing; the
                # result is still delivered (or its failure recorded) by the delivery.
                log.info("job %d: progress message no longer editable: %s", self.job_id, loggable(error))
                return
            except (RetryAfter, NetworkError) as error:
                log.info("job %d: progress edit failed, trying again later: %s", self.job_id, loggable(error))
                self._wanted.set()
            except TelegramError as error:
                log.warning("job %d: progress edit failed: %s", self.job_id, loggable(error))

    async def _update(self) -> None:
        view = await self.service.status(self.job_id)
        if view.job.finished or self.message_id is None:
            return
        text = clip(status_line(view, self.locale), MAX_CAPTION)
        preview = self.service.preview(self.job_id) if self.previews else None
        new_preview = preview is not None and preview != self._preview
        if text == self._text and not new_preview:
            return  # Telegram refuses identical edits, and they would waste the rate limit
        self._last_edit = asyncio.get_running_loop().time()  # an attempt counts against the throttle too
        markup = keyboards.progress(self.public_id, self.locale)
        if new_preview and not self.is_photo:
            # A text message cannot become a photo: post the preview and remove the text.
            message = await self.bot.send_photo(
                self.chat_id, preview, caption=text, reply_markup=markup, message_thread_id=self.thread,
                reply_parameters=ReplyParameters(self.reply_to, allow_sending_without_reply=True)
                if self.reply_to else None)
            old, self.message_id, self.is_photo = self.message_id, message.message_id, True
            await delete_quietly(self.bot, self.chat_id, old)
        elif new_preview:
            await self.bot.edit_message_media(InputMediaPhoto(preview, caption=text), chat_id=self.chat_id,
                                              message_id=self.message_id, reply_markup=markup)
        elif self.is_photo:
            await self.bot.edit_message_caption(chat_id=self.chat_id, message_id=self.message_id, caption=text,
                                                reply_markup=markup)
        else:
            await self.bot.edit_message_text(text, chat_id=self.chat_id, message_id=self.message_id,
                                             reply_markup=markup)
        self._text = text
        if new_preview:
            self._preview = preview


async def delete_quietly(bot: Bot, chat_id: int, message_id: int | None) -> bool:
    """Delete a message of the bot's; a message already gone (or too old) is not an error."""
    if message_id is None:
        return False
    try:
        return await bot.delete_message(chat_id, message_id)
    except TelegramError as error:
        log.info("could not delete message %s in chat %s: %s", message_id, chat_id, loggable(error))
        return False
