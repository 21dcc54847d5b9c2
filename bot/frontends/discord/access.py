"""Who is asking and where: the Origin of an interaction, admin rights, allowed channels.

Admin rights come from the configuration only (user ids, role ids). Discord's `default_permissions`
merely hide commands in the client; every admin action is checked here, on our side, again. The
blocklist is the core's (bot/core/moderation.py); the Origin says whether the channel is
age-restricted, where it does not apply.
"""

from __future__ import annotations

import discord

from bot.config import DiscordConfig
from bot.core.errors import UserError
from bot.core.jobs import Origin

PLATFORM = "discord"


def is_admin(user: discord.abc.User, config: DiscordConfig) -> bool:
    if user.id in config.admin_users:
        return True
    # Role ids as the interaction's member payload lists them: this does not depend on the guild
    # (and its roles) being in the cache.
    role_ids = getattr(user, "_roles", ())
    return any(role in role_ids for role in config.admin_roles)


def origin_of(interaction: discord.Interaction, config: DiscordConfig) -> Origin:
    """Enough to answer this user later, after a restart included (no interaction token kept)."""
    user = interaction.user
    return Origin(
        platform=PLATFORM,
        user_id=str(user.id),
        chat_id=str(interaction.channel_id or ""),
        user_name=user.name,
        reply={"interaction_id": interaction.id},
        locale=str(interaction.locale),
        is_admin=is_admin(user, config),
        guild_id=interaction.guild_id,
        upload_limit=interaction.filesize_limit,  # boosted servers take larger files
        adult_content=is_age_restricted(interaction),  # the core's blocklist does not apply there
    )


def check_channel(interaction: discord.Interaction, config: DiscordConfig) -> None:
    """Refuse channels outside `allowed_channels` (a thread counts as its parent channel)."""
    if not config.allowed_channels:
        return
    channel = interaction.channel
    ids = {interaction.channel_id, getattr(channel, "parent_id", None)}
    if ids & set(config.allowed_channels):
        return
    raise UserError("dc_channel_not_allowed", channels=", ".join(f"<#{c}>" for c in config.allowed_channels))


def is_age_restricted(interaction: discord.Interaction) -> bool:
    channel = interaction.channel
    is_nsfw = getattr(channel, "is_nsfw", None)
    try:
        return bool(is_nsfw()) if callable(is_nsfw) else False
    except AttributeError:  # a thread whose parent channel is not cached
        return False
