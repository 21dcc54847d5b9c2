"""The slash commands and button clicks: Discord input -> service calls -> a reply.

Every interaction is answered within Discord's 3 seconds: the reply comes at once when the work is
quick (it nearly always is: submitting is a database insert), and a defer goes out first when it is
not. Refusals (`UserError`) are answered ephemerally in the user's language.

Option ranges come from the configured limits, so the commands are built at start-up (and this
module does not use postponed annotations: discord.py reads the annotations as objects).
"""

import asyncio
import logging
from typing import Any, Awaitable, Callable, Optional

import discord
from discord import app_commands

from bot.config import Config
from bot.core.errors import UserError
from bot.core.jobs import QUEUED, Origin, is_public_id, short_id
from bot.core.messages import FALLBACK_LOCALE
from bot.core.request import MAX_SEED, parse_prompt
from bot.core.resolve import MIN_STRENGTH
from bot.core.service import JobRef
from bot.core.uploads import FORMATS
from bot.frontends.discord.access import PLATFORM, check_channel, origin_of
from bot.frontends.discord import describing
from bot.frontends.discord.delivery import TRANSIENT, Delivery
from bot.frontends.discord.render import status_text
from bot.frontends.discord.strings import STRINGS, explain, render
from bot.frontends.discord.views import RemixModal
from bot.frontends.text import clip, without_paths
from bot.frontends.wording import reworded
from bot.models.variant import SCHEDULERS

log = logging.getLogger(__name__)

ACK_SECONDS = 2.0  # Discord wants an answer within 3 s; work that takes longer is deferred first
MESSAGE_LIMIT = 2000  # characters in one Discord message
STRING_OPTION_LIMIT = 6000  # Discord's longest string option
ASPECTS = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4", "21:9")
HISTORY_SIZE = 10


def command_text(key: str) -> app_commands.locale_str:
    """A command or option text from the catalogue: English by default, translated at sync."""
    return app_commands.locale_str(STRINGS[FALLBACK_LOCALE][key], key=key)


class CatalogueTranslator(app_commands.Translator):
    """Gives Discord the Vietnamese names of descriptions and choices when commands are synced."""

    async def translate(self, string: app_commands.locale_str, locale: discord.Locale,
                        context: app_commands.TranslationContext) -> Optional[str]:
        key = string.extras.get("key")
        language = locale.value.split("-")[0]
        if key is None or language == FALLBACK_LOCALE:
            return None
        return STRINGS.get(language, {}).get(key)


class Tree(app_commands.CommandTree):
    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        """Anything a handler did not answer itself: a clear ephemeral reply, and a log line."""
        locale = str(interaction.locale)
        original = getattr(error, "original", error)
        if isinstance(original, UserError):
            text = explain(original, locale)
        elif isinstance(error, app_commands.TransformerError):
            text = render("dc_bad_option", locale, value=str(error.value)[:100])
        else:
            log.error("command %s failed", interaction.command and interaction.command.name, exc_info=original)
            text = render("dc_error", locale)
        await answer(interaction, text, ephemeral=True, quiet=True)


async def acknowledged(interaction: discord.Interaction, work: Awaitable[Any], *, ephemeral: bool) -> Any:
    """Run `work`; if it is not done within ACK_SECONDS, defer so the interaction does not expire."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=ACK_SECONDS)
    if not done and not interaction.response.is_done():
        await interaction.response.defer(ephemeral=ephemeral, thinking=True)
    return await task


async def answer(interaction: discord.Interaction, text: str, *, ephemeral: bool, quiet: bool = False) -> int | None:
    """Reply (or fill in the deferred reply); returns the reply's message id when Discord says it."""
    text = clip(text, MESSAGE_LIMIT)
    try:
        if interaction.response.is_done():
            message = await interaction.edit_original_response(content=text)
            return message.id
        callback = await interaction.response.send_message(text, ephemeral=ephemeral)
        return callback.message_id if callback is not None else None
    except (discord.HTTPException, *TRANSIENT):
        if not quiet:
            raise
        log.warning("could not answer interaction %s", interaction.id, exc_info=True)
        return None


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
        locale = str(interaction.locale)
        views = await self.service.queue_of(origin_of(interaction, self.discord))
        if not views:
            return render("dc_queue_empty", locale)
        lines = []
        for view in views:
            job = short_id(view.job.public_id)
            if view.job.status == QUEUED:
                line = render("dc_queue_waiting", locale, job=job, position=view.position)
                if view.eta_seconds:
                    line += " " + render("dc_eta", locale, seconds=round(view.eta_seconds))
            elif view.step is not None:
                line = render("dc_queue_running", locale, job=job, step=view.step, total=view.total)
            else:
                line = render("dc_starting", locale, job=job)
            lines.append(f"{line} {_quote(view.job.request.prompt)}")
        return "\n".join(lines)

    async def history(self, interaction: discord.Interaction) -> str:
        locale = str(interaction.locale)
        jobs = await self.service.history(origin_of(interaction, self.discord), HISTORY_SIZE)
        if not jobs:
            return render("dc_history_empty", locale)
        return "\n".join(render("dc_history_item", locale, job=short_id(job.public_id),
                                status=render(f"dc_status_{job.status}", locale),
                                prompt=_quote(job.request.prompt)) for job in jobs)

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
            lines.append(await self._model_list(origin, locale))
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

    async def _model_list(self, origin: Any, locale: str) -> str:
        variants = await self.service.list_variants(origin)
        if not variants:
            return render("dc_models_none", locale)
        default = await self.service.default_model(origin)
        lines = [render("dc_models_header", locale, default=default)]
        for variant in variants:
            tags = []
            if variant["default"]:
                tags.append(render("dc_tag_default", locale))
            if variant["loaded"]:
                tags.append(render("dc_tag_loaded", locale))
            if variant["status"] == "broken":
                tags.append(render("dc_tag_broken", locale, error=without_paths(variant["error"] or "")))
            elif variant["status"] == "disabled":
                tags.append(render("dc_tag_disabled", locale))
            line = f"• **{variant['name']}**" + (f" ({', '.join(tags)})" if tags else "")
            if variant["description"]:
                line += f": {variant['description']}"
            lines.append(line)
        return "\n".join(lines)

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
        names = [v["name"] for v in await self.service.list_variants() if v["status"] == "ready"]
        return [app_commands.Choice(name=n, value=n) for n in names if wanted in n.lower()][:25]

    # --- registration ---------------------------------------------------------------------------

    def register(self, tree: app_commands.CommandTree) -> None:
        limits = self.config.limits
        prompt_limit = min(limits.max_prompt_chars, STRING_OPTION_LIMIT)
        Prompt = app_commands.Range[str, 1, prompt_limit]
        Steps = app_commands.Range[int, 1, limits.max_steps]
        Guidance = app_commands.Range[float, 0.0, limits.max_guidance]
        Refiner = app_commands.Range[float, 0.0, 0.99]  # where a model's refiner takes over; 0 = off
        Count = app_commands.Range[int, 1, limits.max_images]
        Seed = app_commands.Range[int, -1, MAX_SEED]
        Strength = app_commands.Range[float, MIN_STRENGTH, 1.0]
        commands = self

        async def text_reply(interaction: discord.Interaction, work: Awaitable[str]) -> None:
            try:
                text = await acknowledged(interaction, work, ephemeral=True)
            except UserError as error:
                text = explain(error, str(interaction.locale))
            await answer(interaction, text, ephemeral=True)

        @app_commands.command(name="imagine", description=command_text("dc_cmd_imagine"))
        @app_commands.describe(prompt=command_text("dc_opt_prompt"), negative=command_text("dc_opt_negative"),
                               model=command_text("dc_opt_model"), aspect=command_text("dc_opt_aspect"),
                               size=command_text("dc_opt_size"), steps=command_text("dc_opt_steps"),
                               guidance=command_text("dc_opt_guidance"), seed=command_text("dc_opt_seed"),
                               count=command_text("dc_opt_count"), scheduler=command_text("dc_opt_scheduler"),
                               image=command_text("dc_opt_image"), strength=command_text("dc_opt_strength"),
                               refiner=command_text("dc_opt_refiner"))
        @app_commands.choices(scheduler=[app_commands.Choice(name=name, value=name) for name in SCHEDULERS])
        async def imagine(interaction: discord.Interaction, prompt: Prompt, negative: Optional[str] = None,
                          model: Optional[str] = None, aspect: Optional[str] = None, size: Optional[str] = None,
                          steps: Optional[Steps] = None, guidance: Optional[Guidance] = None,
                          seed: Optional[Seed] = None, count: Optional[Count] = None,
                          scheduler: Optional[str] = None, refiner: Optional[Refiner] = None,
                          image: Optional[discord.Attachment] = None, strength: Optional[Strength] = None) -> None:
            await commands.imagine(interaction, prompt, image, negative_prompt=negative, model=model, aspect=aspect,
                                   size=size, steps=steps, guidance=guidance, seed=seed, count=count,
                                   scheduler=scheduler, refiner=refiner, strength=strength)

        @imagine.autocomplete("model")
        async def imagine_model(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return await commands.model_choices(current)

        @imagine.autocomplete("aspect")
        async def imagine_aspect(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=a, value=a) for a in ASPECTS if a.startswith(current.strip())]

        # /model lists for everyone, so it carries no default_permissions (they would hide the list);
        # its admin options are checked against the configured admins like /admin's subcommands.
        @app_commands.command(name="model", description=command_text("dc_cmd_model"))
        @app_commands.describe(default=command_text("dc_opt_model_default"), scope=command_text("dc_opt_model_scope"),
                               reload=command_text("dc_opt_model_reload"))
        @app_commands.choices(scope=[app_commands.Choice(name=command_text("dc_scope_channel"), value="channel"),
                                     app_commands.Choice(name=command_text("dc_scope_global"), value="global")])
        async def model(interaction: discord.Interaction, default: Optional[str] = None, scope: str = "channel",
                        reload: bool = False) -> None:
            await text_reply(interaction, commands.model(interaction, default, scope, reload))

        @model.autocomplete("default")
        async def model_default(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return await commands.model_choices(current)

        # /admin is hidden from members without Manage Server until the server's owner grants it to
        # others (Server Settings > Integrations); every subcommand checks the configured admins itself.
        admin = app_commands.Group(name="admin", description=command_text("dc_cmd_admin"), guild_only=True,
                                   allowed_contexts=app_commands.AppCommandContext(guild=True),
                                   default_permissions=discord.Permissions(manage_guild=True))

        @admin.command(name="model", description=command_text("dc_cmd_admin_model"))
        @app_commands.describe(name=command_text("dc_opt_admin_model_name"), scope=command_text("dc_opt_model_scope"))
        @app_commands.choices(scope=[app_commands.Choice(name=command_text("dc_scope_channel"), value="channel"),
                                     app_commands.Choice(name=command_text("dc_scope_global"), value="everywhere")])
        async def admin_model(interaction: discord.Interaction, name: str, scope: str = "channel") -> None:
            work = commands.set_default(interaction, name, "global" if scope == "everywhere" else "channel")
            await text_reply(interaction, work)

        @admin_model.autocomplete("name")
        async def admin_model_name(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
            return await commands.model_choices(current)

        @admin.command(name="reload", description=command_text("dc_cmd_admin_reload"))
        async def admin_reload(interaction: discord.Interaction) -> None:
            await text_reply(interaction, commands.reload(interaction))

        @admin.command(name="ban", description=command_text("dc_cmd_admin_ban"))
        @app_commands.describe(user=command_text("dc_opt_admin_user"), reason=command_text("dc_opt_admin_reason"))
        async def admin_ban(interaction: discord.Interaction, user: discord.User,
                            reason: app_commands.Range[str, 1, 300]) -> None:
            await text_reply(interaction, commands.ban(interaction, user, reason))

        @admin.command(name="unban", description=command_text("dc_cmd_admin_unban"))
        @app_commands.describe(user=command_text("dc_opt_admin_user"))
        async def admin_unban(interaction: discord.Interaction, user: discord.User) -> None:
            await text_reply(interaction, commands.unban(interaction, user))

        @app_commands.command(name="describe", description=command_text("dc_cmd_describe"))
        @app_commands.describe(image=command_text("dc_opt_describe_image"))
        async def describe(interaction: discord.Interaction, image: discord.Attachment) -> None:
            await commands.describe(interaction, image)

        @app_commands.context_menu(name=command_text("dc_menu_imagine_from"))
        async def imagine_from(interaction: discord.Interaction, message: discord.Message) -> None:
            await commands.imagine_from_message(interaction, message)

        @app_commands.command(name="queue", description=command_text("dc_cmd_queue"))
        async def queue(interaction: discord.Interaction) -> None:
            await text_reply(interaction, commands.queue(interaction))

        @app_commands.command(name="cancel", description=command_text("dc_cmd_cancel"))
        @app_commands.describe(job=command_text("dc_opt_job"))
        async def cancel(interaction: discord.Interaction,
                         job: Optional[app_commands.Range[str, 1, 30]] = None) -> None:
            await text_reply(interaction, commands.cancel(interaction, job))

        @app_commands.command(name="settings", description=command_text("dc_cmd_settings"))
        @app_commands.describe(flags=command_text("dc_opt_flags"), scope=command_text("dc_opt_settings_scope"),
                               clear=command_text("dc_opt_clear"))
        @app_commands.choices(scope=[app_commands.Choice(name=command_text("dc_scope_me"), value="me"),
                                     app_commands.Choice(name=command_text("dc_scope_channel"), value="channel")])
        async def settings(interaction: discord.Interaction, flags: Optional[str] = None, scope: str = "me",
                           clear: bool = False) -> None:
            await text_reply(interaction, commands.settings(interaction, flags, scope, clear))

        @app_commands.command(name="history", description=command_text("dc_cmd_history"))
        async def history(interaction: discord.Interaction) -> None:
            await text_reply(interaction, commands.history(interaction))

        @app_commands.command(name="help", description=command_text("dc_cmd_help"))
        async def help_(interaction: discord.Interaction) -> None:
            await answer(interaction, commands.help(interaction), ephemeral=True)

        for command in (imagine, describe, imagine_from, model, admin, queue, cancel, settings, history, help_):
            tree.add_command(command)


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


def _quote(prompt: str, limit: int = 80) -> str:
    return "“" + clip(prompt.replace("\n", " "), limit) + "”"
