"""What the slash commands and button clicks do: Discord input -> service calls -> a reply.

Every interaction is answered within Discord's 3 seconds: the reply comes at once when the work is
quick (it nearly always is: submitting is a database insert), and a defer goes out first when it is
not (interactions.py). Refusals (`UserError`) are answered ephemerally in the user's language.
The commands themselves (names, options, who sees them) are declared in slash.py.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Optional

import discord
from discord import app_commands

from bot.config import Config
from bot.core.errors import UserError
from bot.core.jobs import Origin, is_public_id, short_id
from bot.core.request import parse_prompt
from bot.core.service import JobRef
from bot.core.uploads import FORMATS
from bot.frontends.discord.access import PLATFORM, check_channel, origin_of
from bot.frontends.discord import describing
from bot.frontends.discord.delivery import TRANSIENT, Delivery
from bot.frontends.discord.interactions import MESSAGE_LIMIT, acknowledged, answer
from bot.frontends.discord.listings import history_text, models_text, queue_text
from bot.frontends.discord.render import status_text
from bot.frontends.discord.strings import explain, render
from bot.frontends.discord.views import RemixModal
from bot.frontends.listings import read_history, read_models, read_queue, usable_names
from bot.frontends.text import clip
from bot.frontends.wording import reworded
from bot.models.variant import SCHEDULERS

log = logging.getLogger(__name__)

HISTORY_SIZE = 10


class Commands:
    def __init__(self, service: Any, config: Config, delivery: Delivery) -> None:
        self.service = service
        self.config = config
        self.discord = config.discord
        self.delivery = delivery

    # --- the jobs ------------------------------------------------------------------------------

    async def imagine(self, interaction: discord.Interaction, prompt: str,
                      image: Optional[discord.Attachment] = None, **fields: Any) -> None:
        """/imagine; with an `image` attachment, that image is the image prompt."""
        async def submit() -> Any:
            check_channel(interaction, self.discord)
            values = {name: value for name, value in fields.items() if value is not None}
            if image is not None:
                values["image"] = await read_attachment(image, self.config.limits.max_upload_bytes)
            return await self.service.submit(prompt, origin_of(interaction, self.discord), **values)

        await self._queue_job(interaction, submit)

    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        """/describe image: prompts the captioning model suggests, each with a button to imagine it."""
        locale = str(interaction.locale)

        async def work() -> list[str]:
            check_channel(interaction, self.discord)
            data = await read_attachment(image, self.config.limits.max_upload_bytes)
            return await self.service.describe(data, origin_of(interaction, self.discord))

        try:
            prompts = await acknowledged(interaction, work(), ephemeral=False)
        except UserError as error:
            await answer(interaction, explain(error, locale), ephemeral=True, quiet=True)
            return
        content = clip(describing.text(prompts, locale), MESSAGE_LIMIT)
        if interaction.response.is_done():
            await interaction.edit_original_response(content=content, view=describing.view(len(prompts)))
        else:
            await interaction.response.send_message(content, view=describing.view(len(prompts)))

    async def imagine_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        """The message menu's "Imagine from this image": ask for a prompt, then imagine from its picture."""
        picture = next((a for a in message.attachments if (a.content_type or "").startswith("image/")), None)
        if picture is None:
            await answer(interaction, render("dc_no_image_in_message", str(interaction.locale)), ephemeral=True)
            return
        await interaction.response.send_modal(PromptModal(self, picture, str(interaction.locale)))

    async def imagine_described(self, interaction: discord.Interaction, prompt: Optional[str]) -> None:
        """A number under /describe's answer: imagine that prompt."""
        if not prompt:
            await answer(interaction, render("dc_error", str(interaction.locale)), ephemeral=True, quiet=True)
            return
        await self.imagine(interaction, prompt)

    async def on_button(self, interaction: discord.Interaction, action: str, job: JobRef, index: int,
                        prompt: Optional[str] = None) -> None:
        """A result's button; `job` is the job's public id (an int from buttons made before public ids).
        Remix first opens a modal with the prompt; its submission comes back here with `prompt`."""
        locale = str(interaction.locale)
        try:
            if action == "delete":
                await self._delete(interaction, job)
                return
            if action == "remix" and prompt is None:
                check_channel(interaction, self.discord)
                source = await self.service.job(job)
                if source.status != "done" or not 0 <= index < len(source.images):
                    raise UserError("no_such_image", job=short_id(source.public_id), index=index + 1)
                await interaction.response.send_modal(RemixModal(source, index, locale))
                return

            async def submit() -> Any:
                check_channel(interaction, self.discord)
                return await self.service.submit_derived(job, action, origin_of(interaction, self.discord), index,
                                                         prompt=prompt)

            await self._queue_job(interaction, submit)
        except UserError as error:
            await answer(interaction, explain(error, locale), ephemeral=True, quiet=True)
        except Exception:
            log.exception("button %s on job %s failed", action, job)
            await answer(interaction, render("dc_error", locale), ephemeral=True, quiet=True)

    async def _queue_job(self, interaction: discord.Interaction, submit: Callable[[], Awaitable[Any]]) -> None:
        """Submit, follow the job, and answer "queued #N" (publicly: its progress and result go there)."""
        locale = str(interaction.locale)

        async def work() -> Any:
            # The core's blocklist (age-restricted channels exempt), in Discord's words.
            with reworded(blocked_word="dc_blocked_word"):
                submitted = await submit()
            # Followed before the first await after submitting, so no event of this job is missed.
            return submitted, self.delivery.track(submitted.job_id, submitted.public_id, interaction, locale)

        try:
            submitted, target = await acknowledged(interaction, work(), ephemeral=False)
        except UserError as error:
            await answer(interaction, explain(error, locale), ephemeral=True, quiet=True)
            return
        event = {"type": "queued", "position": submitted.position, "eta": submitted.eta_seconds}
        message_id, usable = None, False
        try:
            message_id = await answer(interaction, status_text(event, short_id(submitted.public_id), locale),
                                      ephemeral=False)
            usable = True
        except (discord.HTTPException, *TRANSIENT) as error:
            log.warning("job %d: the queued reply failed (%s); the result goes to the channel", submitted.job_id, error)
        finally:  # whatever happened, the result must not wait for a reply that never comes
            self.delivery.replied(target, message_id, usable)

    async def _delete(self, interaction: discord.Interaction, ref: JobRef) -> None:
        job_id = (await self.service.owned_job(ref, origin_of(interaction, self.discord))).id  # owner's or admin's
        await interaction.response.defer()  # a component's deferred update: the message stays ours to delete
        try:
            await interaction.delete_original_response()
        except (discord.NotFound, discord.Forbidden) as error:
            log.info("job %d: result message already gone or not ours to delete: %s", job_id, error)

    # --- looking things up ----------------------------------------------------------------------

    async def queue(self, interaction: discord.Interaction) -> str:
        lines = await read_queue(self.service, origin_of(interaction, self.discord))
        return queue_text(lines, str(interaction.locale))

    async def history(self, interaction: discord.Interaction) -> str:
        lines = await read_history(self.service, origin_of(interaction, self.discord), HISTORY_SIZE)
        return history_text(lines, str(interaction.locale))

    async def cancel(self, interaction: discord.Interaction, job: Optional[str]) -> str:
        """/cancel: the caller's latest unfinished job; /cancel job:a3f09c: theirs by its short id
        (an admin gives a whole public id to stop someone else's)."""
        locale = str(interaction.locale)
        origin = origin_of(interaction, self.discord)
        if job is None:  # the user's latest unfinished job
            with reworded(nothing_to_cancel="dc_nothing_to_cancel"):
                job_id, status = await self.service.cancel_latest(origin)
            public_id = (await self.service.job(job_id)).public_id
        else:
            ref = job.strip().lstrip("#").lower()
            public_id = ref if is_public_id(ref) else (await self.service.own_job_by_prefix(ref, origin)).public_id
            status = await self.service.cancel(public_id, origin)
        return render("dc_cancel_done" if status == "cancelled" else "dc_cancel_stopping", locale,
                      job=short_id(public_id))

    async def model(self, interaction: discord.Interaction, default: Optional[str], scope: str, reload: bool) -> str:
        """/model: the list for everyone; its `default` and `reload` options do what /admin does."""
        locale = str(interaction.locale)
        origin = origin_of(interaction, self.discord)
        lines = []
        if reload:
            lines.append(await self.reload(interaction))
        if default:
            lines.append(await self.set_default(interaction, default, scope))
        if not lines:
            lines.append(models_text(await read_models(self.service, origin), locale))
            if origin.is_admin:
                lines.append(render("dc_models_admin_hint", locale))
        return "\n".join(lines)

    async def set_default(self, interaction: discord.Interaction, name: str, scope: str) -> str:
        """The default model of this channel (scope "channel") or of every chat ("global")."""
        origin = self._admin_origin(interaction)
        await self.service.set_default_variant("global" if scope == "global" else "chat", name, origin)
        return render("dc_model_set_global" if scope == "global" else "dc_model_set_channel", str(interaction.locale),
                      name=name.strip())

    async def reload(self, interaction: discord.Interaction) -> str:
        """Rescan the model store now."""
        summary = await self.service.reload_models(self._admin_origin(interaction))
        locale = str(interaction.locale)
        none = render("dc_none", locale)
        return render("dc_models_reloaded", locale, added=", ".join(summary["added"]) or none,
                      changed=", ".join(summary["changed"]) or none, removed=", ".join(summary["removed"]) or none)

    async def ban(self, interaction: discord.Interaction, user: discord.abc.User, reason: str) -> str:
        """Refuse every later request of `user` with `reason`; the core writes the audit log."""
        await self.service.ban(f"{PLATFORM}:{user.id}", reason, self._admin_origin(interaction))
        return render("dc_banned", str(interaction.locale), user=user.mention, reason=reason.strip())

    async def unban(self, interaction: discord.Interaction, user: discord.abc.User) -> str:
        await self.service.unban(f"{PLATFORM}:{user.id}", self._admin_origin(interaction))
        return render("dc_unbanned", str(interaction.locale), user=user.mention)

    def _admin_origin(self, interaction: discord.Interaction) -> Origin:
        """The caller's Origin if they are a configured admin (user or role id); refused otherwise.

        This is the real check: Discord's default_permissions only hide a command, and a server's
        owner can grant it to anyone. The service checks the Origin's admin flag again."""
        origin = origin_of(interaction, self.discord)
        if not origin.is_admin:
            raise UserError("not_admin")
        return origin

    async def settings(self, interaction: discord.Interaction, flags: Optional[str], scope: str, clear: bool) -> str:
        locale = str(interaction.locale)
        origin = origin_of(interaction, self.discord)
        if flags is None and not clear:
            current = await self.service.default_flags(origin)
            none = render("dc_none", locale)
            return render("dc_settings_show", locale, user=current["user"] or none, channel=current["chat"] or none)
        value = "" if clear else (flags or "").strip()
        if value and parse_prompt("x " + value).prompt != "x":
            raise UserError("dc_settings_flags_only")
        if scope == "channel":
            # The core lets a chat's managers or the bot's admins; on Discord only the bot's admins
            # (configured users and roles) set channel defaults, so the Origin never manages the chat.
            with reworded(chat_admins_only="not_admin"):
                await self.service.set_chat_flags(value, origin)
        else:
            await self.service.set_user_flags(value, origin)
        if not value:
            return render("dc_settings_cleared_channel" if scope == "channel" else "dc_settings_cleared_user", locale)
        return render("dc_settings_saved_channel" if scope == "channel" else "dc_settings_saved_user", locale,
                      flags=value)

    def help(self, interaction: discord.Interaction) -> str:
        limits = self.config.limits
        return render("dc_help", str(interaction.locale), max_images=limits.max_images, max_steps=limits.max_steps,
                      schedulers=", ".join(SCHEDULERS))

    async def model_choices(self, current: str) -> list[app_commands.Choice[str]]:
        wanted = current.strip().lower()
        names = usable_names(await self.service.list_variants())
        return [app_commands.Choice(name=n, value=n) for n in names if wanted in n.lower()][:25]


class PromptModal(discord.ui.Modal):
    """Asks for the prompt to go with a picture from a message (the message menu's "Imagine from this image")."""

    def __init__(self, commands: "Commands", picture: discord.Attachment, locale: str) -> None:
        super().__init__(title=clip(render("dc_modal_imagine_title", locale), 45), timeout=600)
        self.commands = commands
        self.picture = picture
        limit = min(commands.config.limits.max_prompt_chars, 4000)
        self.prompt = discord.ui.TextInput(label=clip(render("dc_modal_prompt_label", locale), 45),
                                           style=discord.TextStyle.paragraph, max_length=limit)
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.commands.imagine(interaction, self.prompt.value, self.picture)


async def read_attachment(attachment: discord.Attachment, limit: int) -> bytes:
    """An attachment's bytes from Discord's CDN; one Discord says is too large is not fetched."""
    if attachment.size > limit:
        raise UserError("upload_too_large", what="image", got=f"{attachment.size / 2**20:.1f} MiB",
                        limit=f"{limit / 2**20:.1f} MiB")
    if attachment.content_type and not attachment.content_type.startswith("image/"):
        raise UserError("upload_not_image", what="image", formats=", ".join(FORMATS))
    return await attachment.read()
