"""Following jobs and delivering their results.

One subscription to every Discord job's events feeds this module. A job submitted through an
interaction has a `Target`: its progress edits the interaction's original response (at most one edit
per `edit_interval`, with the half-made preview when enabled) and its result replaces that response,
as long as the interaction token is valid (15 minutes). A job that finishes later, or one nobody
follows any more (submitted before a restart), is delivered as a normal channel message with the bot
token, mentioning its user. Results still undelivered at start are delivered the same way.

The store's delivery state is the truth: a result is marked delivered once Discord took it, marked
failed when the message, channel or permission is gone for good, and left pending on a transient
error so the next start tries again. discord.py handles rate limits (429) itself.
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
from bot.core.jobs import DELIVERY_PENDING, Job
from bot.core.messages import render
from bot.frontends.discord.access import PLATFORM
from bot.frontends.discord.render import failure_text, preview_file, result_embed, result_upload, status_text
from bot.frontends.discord.views import result_view

log = logging.getLogger(__name__)

TOKEN_LIFETIME = 15 * 60  # seconds an interaction token can edit its response
TOKEN_MARGIN = 30  # stop using it a little early: an upload started at 14:59 would fail half-way
FINAL = ("done", "failed", "cancelled")
# Errors after which trying again later may work (Discord down, network gone); the rest are final.
TRANSIENT = (discord.DiscordServerError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class Undeliverable(Exception):
    """The job has nowhere to go (no channel recorded)."""


@dataclass
class Target:
    """A job whose interaction response we may still edit."""

    job_id: int
    interaction: discord.Interaction
    locale: str | None
    expires: float  # clock time from which the token is no longer used
    last_edit: float
    message_id: int | None = None  # the response message, to reply to once the token expired
    gone: bool = False  # the response message was deleted: no more edits
    ready: asyncio.Event = field(default_factory=asyncio.Event)  # set once the first reply is sent
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)


class Delivery:
    def __init__(self, service: Any, config: Config, client: discord.Client, clock: Callable[[], float]) -> None:
        self.service = service
        self.config = config
        self.client = client
        self.clock = clock
        self.interval = config.discord.edit_interval
        self._targets: dict[int, Target] = {}
        self._busy: set[int] = set()  # jobs being delivered by channel message
        self._tasks: set[asyncio.Task] = set()
        self._events = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        # Subscribe before reading what is undelivered, so a job finishing in between is not missed
        # (the busy set and the store's delivery state keep it from being sent twice).
        self._events = self.service.subscribe(None, PLATFORM)
        self._spawn(self._watch(), "discord-delivery")
        self._spawn(self._recover(), "discord-recover")

    async def stop(self) -> None:
        """Stop following; what is not delivered yet stays pending for the next start."""
        if self._events is not None:
            self._events.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- following interactions ------------------------------------------------------------------

    def track(self, job_id: int, interaction: discord.Interaction, locale: str | None) -> Target:
        """Follow a job just submitted through `interaction`. Call `replied()` once the first reply
        is out; edits wait for it."""
        now = self.clock()
        target = Target(job_id, interaction, locale, expires=now + TOKEN_LIFETIME - TOKEN_MARGIN, last_edit=now)
        self._targets[job_id] = target
        self._spawn(self._follow(target), f"discord-job-{job_id}")
        return target

    def replied(self, target: Target, message_id: int | None, usable: bool = True) -> None:
        target.message_id = message_id
        if not usable:  # the first reply failed: the token is of no use, deliver by channel message
            target.expires = -math.inf
        target.last_edit = self.clock()
        target.ready.set()

    async def _watch(self) -> None:
        async for event in self._events:
            target = self._targets.get(event["job"])
            if target is not None:
                target.queue.put_nowait(event)
            elif event["type"] in FINAL:
                self._spawn(self._deliver_untracked(event["job"]), f"discord-deliver-{event['job']}")

    async def _follow(self, target: Target) -> None:
        try:
            await target.ready.wait()
            while True:
                event = await target.queue.get()
                while not target.queue.empty():  # fell behind (a slow edit): only the latest matters
                    event = target.queue.get_nowait()
                if event["type"] in FINAL:
                    await self._finish(target)
                    return
                await self._progress(target, event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("following job %d failed; it stays pending for the next start", target.job_id)
        finally:
            self._targets.pop(target.job_id, None)

    async def _progress(self, target: Target, event: dict) -> None:
        now = self.clock()
        if target.gone or now >= target.expires or now - target.last_edit < self.interval:
            return  # throttled: a later event (or the result) brings the message up to date
        target.last_edit = now
        kwargs: dict[str, Any] = {}
        if event["type"] == "progress" and event.get("preview") and self.config.discord.previews:
            data = self.service.preview(target.job_id)
            if data:
                kwargs["attachments"] = [preview_file(data)]
        try:
            await target.interaction.edit_original_response(content=status_text(event, target.job_id, target.locale),
                                                            **kwargs)
        except (discord.NotFound, discord.Forbidden) as error:
            log.info("job %d: progress message gone (%s); no more edits", target.job_id, error)
            target.gone = True
        except (discord.HTTPException, *TRANSIENT) as error:
            log.warning("job %d: progress edit failed: %s", target.job_id, error)

    async def _finish(self, target: Target) -> None:
        job = await self.service.job(target.job_id)
        if job.delivery != DELIVERY_PENDING:
            return
        if target.gone:
            log.info("job %d: its message was deleted; result not delivered", job.id)
            await self.service.mark_delivered(job.id, False)
        elif self.clock() < target.expires:
            await self._deliver(job, self._edit_response(target, job), "interaction response")
        else:
            await self._deliver(job, self._send_to_channel(job, target.locale, reply_to=target.message_id),
                                "channel message (the interaction token expired)")

    # --- delivering ---------------------------------------------------------------------------

    async def _recover(self) -> None:
        for job in await self.service.undelivered(PLATFORM):
            if job.id not in self._targets:
                await self._deliver_untracked(job.id)

    async def _deliver_untracked(self, job_id: int) -> None:
        if job_id in self._busy:
            return
        self._busy.add(job_id)
        try:
            job = await self.service.job(job_id)
            if job.delivery == DELIVERY_PENDING:
                await self._deliver(job, self._send_to_channel(job, job.origin.locale), "channel message")
        finally:
            self._busy.discard(job_id)

    async def _deliver(self, job: Job, sending: Any, how: str) -> None:
        """Await `sending` and record the outcome in the store."""
        try:
            await sending
        except (discord.NotFound, discord.Forbidden, Undeliverable) as error:
            log.warning("job %d: result not delivered by %s, the message or channel is gone or not permitted: %s",
                        job.id, how, error)
            await self.service.mark_delivered(job.id, False)
        except TRANSIENT as error:  # Discord or the network is down: the next start tries again
            log.warning("job %d: result not delivered by %s, will retry at the next start: %s", job.id, how, error)
        except discord.HTTPException as error:  # refused for good (a 400): trying again would not help
            log.warning("job %d: Discord refused the result (%s): %s", job.id, how, error)
            await self.service.mark_delivered(job.id, False)
        else:
            log.info("job %d delivered by %s", job.id, how)
            await self.service.mark_delivered(job.id, True)

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
        channel = self.client.get_partial_messageable(int(origin.chat_id), guild_id=origin.message_ids.get("guild_id"))
        mention = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(int(origin.user_id))])
        reference = None
        if reply_to is not None:
            reference = discord.MessageReference(message_id=reply_to, channel_id=channel.id,
                                                 guild_id=origin.message_ids.get("guild_id"), fail_if_not_exists=False)
        if job.status != "done":
            if job.status == "cancelled":
                return  # whoever cancelled it knows; a channel message would only be noise
            await channel.send(f"<@{origin.user_id}> {failure_text(job, locale)}", allowed_mentions=mention,
                               reference=reference)
            return
        content, embed, files, view = self._result(job, locale, origin.message_ids.get("filesize_limit"))
        await channel.send(content, embed=embed, files=files, view=view, allowed_mentions=mention, reference=reference)

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
        content = render("dc_done", locale, mention=f"<@{job.origin.user_id}>", job=job.id)
        return content, embed, [upload.file] if upload.file else [], result_view(job, locale)
