"""Following Discord jobs and delivering their results: the Discord side of the shared delivery loop
(bot/frontends/delivery.py).

A job submitted through an interaction has a `Target`: its progress edits the interaction's original
response (at most one edit per `edit_interval`, with the half-made preview when enabled) and its
result replaces that response, as long as the interaction token is valid (15 minutes). A job that
finishes later, one nobody follows any more (submitted before a restart), or one whose interaction
webhook Discord refuses (an invalid token, the response message or the webhook unknown, for whatever
reason) is delivered as a normal channel message with the bot token, mentioning its user.

Errors become the loop's: a channel, message or permission gone for good is `Undeliverable`
(marked failed), Discord or the network being down is `RetryLater`. discord.py handles rate limits
(429) itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import aiohttp
import discord

from bot.config import Config
from bot.core.jobs import Job, short_id
from bot.frontends.delivery import DeliveryLoop, RetryLater, Undeliverable
from bot.frontends.discord.access import PLATFORM
from bot.frontends.discord.render import failure_text, preview_file, result_embed, result_upload, status_text
from bot.frontends.discord.views import result_view
from bot.frontends.discord.strings import render

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60  # seconds an interaction token can edit its response
TOKEN_MARGIN = 30  # stop using it a little early: an upload started at 14:59 would fail half-way
# Errors after which trying again later may work (Discord down, network gone); the rest are final.
TRANSIENT = (discord.DiscordServerError, aiohttp.ClientError, asyncio.TimeoutError, OSError)
# Discord's answers when it no longer takes an interaction's webhook: 401 50027 "Invalid Webhook Token",
# 404 10008 "Unknown Message" (the response was deleted), 404 10015 "Unknown Webhook". Seen before the
# 15 minutes are up too; the bot token can still post in the channel.
WEBHOOK_REFUSED_CODES = (50027, 10008, 10015)


def webhook_refused(error: discord.HTTPException) -> bool:
    """Whether the interaction's webhook is of no more use. Any 401, 403 or 404 counts, not only the
    codes above: the channel message is the other way in, and it fails for itself if the channel is gone."""
    return error.status in (401, 403, 404) or error.code in WEBHOOK_REFUSED_CODES


@dataclass
class Target:
    """A job whose interaction response we may still edit."""

    job_id: int
    public_id: str  # what the texts show of the job (its start: short_id)
    interaction: discord.Interaction
    locale: str | None
    expires: float  # clock time from which the token is no longer used
    last_edit: float
    message_id: int | None = None  # the response message, to reply to once the token is of no use
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once the first reply is sent
    editing: asyncio.Task | None = None  # the progress edit in flight
    finishing: bool = False  # the result is on its way: no more progress edits

    def drop_token(self) -> None:
        self.expires = -math.inf


class Delivery:
    """The `ChatPlatform` of Discord: interaction targets, progress edits, result messages."""

    def __init__(self, service: Any, config: Config, client: discord.Client, clock: Callable[[], float]) -> None:
        self.service = service
        self.config = config
        self.client = client
        self.clock = clock
        self.interval = config.discord.edit_interval
        self.loop = DeliveryLoop(service, PLATFORM, self)
        self._targets: dict[int, Target] = {}

    async def start(self) -> None:
        await self.loop.start()

    async def stop(self) -> None:
        """Stop following; what is not delivered yet stays pending for the next start."""
        await self.loop.stop()
        edits = [target.editing for target in self._targets.values() if target.editing is not None]
        for task in edits:
            task.cancel()
        await asyncio.gather(*edits, return_exceptions=True)
        self._targets.clear()

    # --- following interactions ------------------------------------------------------------------

    def track(self, job_id: int, public_id: str, interaction: discord.Interaction, locale: str | None) -> Target:
        """Follow a job just submitted through `interaction`. Call `replied()` once the first reply
        is out; edits (and the result) wait for it."""
        now = self.clock()
        target = Target(job_id, public_id, interaction, locale, expires=now + TOKEN_LIFETIME - TOKEN_MARGIN,
                        last_edit=now)
        self._targets[job_id] = target
        return target

    def replied(self, target: Target, message_id: int | None, usable: bool = True) -> None:
        target.message_id = message_id
        if not usable:  # the first reply failed: the token is of no use, deliver by channel message
            target.drop_token()
        target.last_edit = self.clock()
        target.ready.set()

    def follows(self, job_id: int) -> bool:
        return job_id in self._targets

    async def adopt(self, job_id: int) -> bool:
        return False  # without its interaction nothing shows progress; the result goes to the channel

    async def on_progress(self, job_id: int, event: dict) -> None:
        target = self._targets[job_id]
        if not target.ready.is_set() or target.finishing or (target.editing and not target.editing.done()):
            return  # the reply is not out yet, or an edit is under way: a later event brings it up to date
        now = self.clock()
        if now >= target.expires or now - target.last_edit < self.interval:
            return  # throttled: a later event (or the result) brings the message up to date
        target.last_edit = now
        target.editing = asyncio.create_task(self._edit_progress(target, event), name=f"discord-progress-{job_id}")

    async def _edit_progress(self, target: Target, event: dict) -> None:
        kwargs: dict[str, Any] = {}
        if event["type"] == "progress" and event.get("preview") and self.config.discord.previews:
            data = self.service.preview(target.job_id)
            if data:
                kwargs["attachments"] = [preview_file(data)]
        try:
            text = status_text(event, short_id(target.public_id), target.locale)
            await target.interaction.edit_original_response(content=text, **kwargs)
        except discord.HTTPException as error:
            if webhook_refused(error):
                log.info("job %d: the interaction webhook refused a progress edit (%s); the result goes to "
                         "the channel", target.job_id, error)
                target.drop_token()
            else:
                log.warning("job %d: progress edit failed: %s", target.job_id, error)
        except TRANSIENT as error:
            log.warning("job %d: progress edit failed: %s", target.job_id, error)
        except Exception:  # a bug here must not go unnoticed in a task nobody awaits
            log.exception("job %d: progress edit failed", target.job_id)

    # --- delivering ---------------------------------------------------------------------------------

    async def send_result(self, job: Job) -> None:
        try:
            target = self._targets.get(job.id)
            if target is None:
                await self._send_to_channel(job, job.origin.locale)
            else:
                await self._send_to_target(target, job)
        except (discord.NotFound, discord.Forbidden) as error:
            raise Undeliverable(f"the channel or message is gone or not permitted: {error}") from error
        except TRANSIENT as error:  # Discord or the network is down (checked before HTTPException: a 5xx is one)
            raise RetryLater(str(error) or type(error).__name__) from error
        except discord.HTTPException as error:  # refused for good (a 400): trying again would not help
            raise Undeliverable(f"Discord refused the result: {error}") from error

    async def release(self, job_id: int) -> None:
        self._targets.pop(job_id, None)

    async def _send_to_target(self, target: Target, job: Job) -> None:
        """Replace the interaction's response while its token is good; else a channel message."""
        await target.ready.wait()
        target.finishing = True
        if target.editing is not None:  # a late progress edit must not land on top of the result
            await asyncio.gather(target.editing, return_exceptions=True)
        if self.clock() < target.expires:
            try:
                await self._edit_response(target, job)
                log.info("job %d: result sent as the interaction response", job.id)
                return
            except discord.HTTPException as error:
                if not webhook_refused(error):
                    raise
                log.info("job %d: the interaction webhook refused the result (%s); sending it to the channel",
                         job.id, error)
                target.drop_token()
        await self._send_to_channel(job, target.locale, reply_to=target.message_id)

    async def _edit_response(self, target: Target, job: Job) -> None:
        interaction = target.interaction
        if job.status != "done":
            await interaction.edit_original_response(content=failure_text(job, target.locale), attachments=[])
            return
        content, embed, files, view = self._result(job, target.locale, interaction.filesize_limit)
        await interaction.edit_original_response(content=content, embed=embed, attachments=files, view=view)

    async def _send_to_channel(self, job: Job, locale: str | None, reply_to: int | None = None) -> None:
        origin = job.origin
        if not origin.chat_id:
            raise Undeliverable("no channel recorded")
        channel = self.client.get_partial_messageable(int(origin.chat_id), guild_id=origin.guild_id)
        mention = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(origin.user_id))])
        reference = None
        if reply_to is not None:
            reference = discord.MessageReference(message_id=reply_to, channel_id=channel.id,
                                                 guild_id=origin.guild_id, fail_if_not_exists=False)
        if job.status != "done":
            if job.status == "cancelled":
                return  # whoever cancelled it knows; a channel message would only be noise
            await channel.send(f"<@{origin.user_id}> {failure_text(job, locale)}", allowed_mentions=mention,
                               reference=reference)
            return
        content, embed, files, view = self._result(job, locale, origin.upload_limit)
        await channel.send(content, embed=embed, files=files, view=view, allowed_mentions=mention, reference=reference)
        log.info("job %d: result sent to channel %s", job.id, origin.chat_id)

    def _result(self, job: Job, locale: str | None, limit: int | None):
        """(content, embed, files, view) of a finished job: the grid of a multi-image job, else its image."""
        outputs = self.config.storage.outputs_path()
        if not job.images:
            raise Undeliverable("the job finished without images")
        name = job.grid if job.grid and len(job.images) > 1 else job.images[0].file
        try:
            upload = result_upload(outputs / name, limit)
        except FileNotFoundError:  # removed from the outputs folder: no later try would find it
            raise Undeliverable(f"{name} is missing from {outputs}") from None
        note = None
        if upload.file is None:
            note = render("dc_image_too_large", locale)
        elif upload.compressed:
            note = render("dc_compressed", locale)
        embed = result_embed(job, locale, upload.file.filename if upload.file else None, note)
        content = render("dc_done", locale, mention=f"<@{job.origin.user_id}>", job=short_id(job.public_id))
        return content, embed, [upload.file] if upload.file else [], result_view(job, locale)
