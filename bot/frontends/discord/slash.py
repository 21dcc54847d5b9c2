"""The slash commands as Discord sees them: names, options, descriptions, who may see them.

Each command only hands its options to `Commands` (commands.py), which does the work. The commands
are a Cog's methods and /admin an `app_commands.Group`, as discord.py's examples declare them; /imagine
alone is built at start-up, since its option ranges come from the configured limits.

This module does not use postponed annotations: discord.py reads the annotations as objects.
"""

from typing import Optional

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Limits
from bot.core.request import MAX_SEED
from bot.models.variant import SCHEDULERS
from bot.core.resolve import MIN_STRENGTH
from bot.frontends.discord.commands import Commands
from bot.frontends.discord.interactions import answer, command_text, text_reply

STRING_OPTION_LIMIT = 6000  # Discord's longest string option
ASPECTS = ("1:1", "16:9", "9:16", "3:2", "2:3", "4:3", "3:4", "21:9")
CHANNEL_OR_GLOBAL = [app_commands.Choice(name=command_text("dc_scope_channel"), value="channel"),
                     app_commands.Choice(name=command_text("dc_scope_global"), value="global")]


def register(tree: app_commands.CommandTree, handlers: Commands, limits: Limits) -> None:
    """Every command of the bot onto `tree`, answered by `handlers`."""
    tree.add_command(imagine_command(handlers, limits))
    chat = ChatCommands(handlers)
    for command in chat.get_app_commands():
        tree.add_command(command)
    tree.add_command(chat.imagine_from)
    tree.add_command(AdminGroup(handlers))


def imagine_command(handlers: Commands, limits: Limits) -> app_commands.Command:
    """/imagine, its options limited as the configuration says."""
    Prompt = app_commands.Range[str, 1, min(limits.max_prompt_chars, STRING_OPTION_LIMIT)]
    Steps = app_commands.Range[int, 1, limits.max_steps]
    Guidance = app_commands.Range[float, 0.0, limits.max_guidance]
    Refiner = app_commands.Range[float, 0.0, 0.99]  # where a model's refiner takes over; 0 = off
    Count = app_commands.Range[int, 1, limits.max_images]
    Seed = app_commands.Range[int, -1, MAX_SEED]
    Strength = app_commands.Range[float, MIN_STRENGTH, 1.0]

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
        await handlers.imagine(interaction, prompt, image, negative_prompt=negative, model=model, aspect=aspect,
                               size=size, steps=steps, guidance=guidance, seed=seed, count=count,
                               scheduler=scheduler, refiner=refiner, strength=strength)

    @imagine.autocomplete("model")
    async def imagine_model(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await handlers.model_choices(current)

    @imagine.autocomplete("aspect")
    async def imagine_aspect(interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return [app_commands.Choice(name=a, value=a) for a in ASPECTS if a.startswith(current.strip())]

    return imagine


class ChatCommands(commands.Cog):
    """The commands everyone sees: /describe, /model, /queue, /cancel, /settings, /history, /help and
    the message menu's "Imagine from this image"."""

    def __init__(self, handlers: Commands) -> None:
        self.handlers = handlers
        # discord.py does not take a context menu from a class body; it is made per instance.
        self.imagine_from = app_commands.ContextMenu(name=command_text("dc_menu_imagine_from"),
                                                     callback=self.imagine_from_message)

    async def imagine_from_message(self, interaction: discord.Interaction, message: discord.Message) -> None:
        await self.handlers.imagine_from_message(interaction, message)

    @app_commands.command(name="describe", description=command_text("dc_cmd_describe"))
    @app_commands.describe(image=command_text("dc_opt_describe_image"))
    async def describe(self, interaction: discord.Interaction, image: discord.Attachment) -> None:
        await self.handlers.describe(interaction, image)

    # /model lists for everyone, so it carries no default_permissions (they would hide the list);
    # its admin options are checked against the configured admins like /admin's subcommands.
    @app_commands.command(name="model", description=command_text("dc_cmd_model"))
    @app_commands.describe(default=command_text("dc_opt_model_default"), scope=command_text("dc_opt_model_scope"),
                           reload=command_text("dc_opt_model_reload"))
    @app_commands.choices(scope=CHANNEL_OR_GLOBAL)
    async def model(self, interaction: discord.Interaction, default: Optional[str] = None, scope: str = "channel",
                    reload: bool = False) -> None:
        await text_reply(interaction, self.handlers.model(interaction, default, scope, reload))

    @model.autocomplete("default")
    async def model_default(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await self.handlers.model_choices(current)

    @app_commands.command(name="queue", description=command_text("dc_cmd_queue"))
    async def queue(self, interaction: discord.Interaction) -> None:
        await text_reply(interaction, self.handlers.queue(interaction))

    @app_commands.command(name="cancel", description=command_text("dc_cmd_cancel"))
    @app_commands.describe(job=command_text("dc_opt_job"))
    async def cancel(self, interaction: discord.Interaction,
                     job: Optional[app_commands.Range[str, 1, 30]] = None) -> None:
        await text_reply(interaction, self.handlers.cancel(interaction, job))

    @app_commands.command(name="settings", description=command_text("dc_cmd_settings"))
    @app_commands.describe(flags=command_text("dc_opt_flags"), scope=command_text("dc_opt_settings_scope"),
                           clear=command_text("dc_opt_clear"))
    @app_commands.choices(scope=[app_commands.Choice(name=command_text("dc_scope_me"), value="me"),
                                 app_commands.Choice(name=command_text("dc_scope_channel"), value="channel")])
    async def settings(self, interaction: discord.Interaction, flags: Optional[str] = None, scope: str = "me",
                       clear: bool = False) -> None:
        await text_reply(interaction, self.handlers.settings(interaction, flags, scope, clear))

    @app_commands.command(name="history", description=command_text("dc_cmd_history"))
    async def history(self, interaction: discord.Interaction) -> None:
        await text_reply(interaction, self.handlers.history(interaction))

    @app_commands.command(name="help", description=command_text("dc_cmd_help"))
    async def help(self, interaction: discord.Interaction) -> None:
        await answer(interaction, self.handlers.help(interaction), ephemeral=True)


class AdminGroup(app_commands.Group):
    """/admin model, reload, ban and unban.

    Hidden from members without Manage Server until the server's owner grants it to others (Server
    Settings > Integrations); every subcommand checks the configured admins itself, since a server's
    owner can grant it to anyone."""

    def __init__(self, handlers: Commands) -> None:
        super().__init__(name="admin", description=command_text("dc_cmd_admin"), guild_only=True,
                         allowed_contexts=app_commands.AppCommandContext(guild=True),
                         default_permissions=discord.Permissions(manage_guild=True))
        self.handlers = handlers

    @app_commands.command(name="model", description=command_text("dc_cmd_admin_model"))
    @app_commands.describe(name=command_text("dc_opt_admin_model_name"), scope=command_text("dc_opt_model_scope"))
    @app_commands.choices(scope=[app_commands.Choice(name=command_text("dc_scope_channel"), value="channel"),
                                 app_commands.Choice(name=command_text("dc_scope_global"), value="everywhere")])
    async def set_model(self, interaction: discord.Interaction, name: str, scope: str = "channel") -> None:
        work = self.handlers.set_default(interaction, name, "global" if scope == "everywhere" else "channel")
        await text_reply(interaction, work)

    @set_model.autocomplete("name")
    async def set_model_name(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return await self.handlers.model_choices(current)

    @app_commands.command(name="reload", description=command_text("dc_cmd_admin_reload"))
    async def reload(self, interaction: discord.Interaction) -> None:
        await text_reply(interaction, self.handlers.reload(interaction))

    @app_commands.command(name="ban", description=command_text("dc_cmd_admin_ban"))
    @app_commands.describe(user=command_text("dc_opt_admin_user"), reason=command_text("dc_opt_admin_reason"))
    async def ban(self, interaction: discord.Interaction, user: discord.User,
                  reason: app_commands.Range[str, 1, 300]) -> None:
        await text_reply(interaction, self.handlers.ban(interaction, user, reason))

    @app_commands.command(name="unban", description=command_text("dc_cmd_admin_unban"))
    @app_commands.describe(user=command_text("dc_opt_admin_user"))
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        await text_reply(interaction, self.handlers.unban(interaction, user))
