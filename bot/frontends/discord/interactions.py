"""Answering Discord interactions: within Discord's 3 seconds, in the user's language, and what
the command tree does with errors no handler answered; the catalogue's texts for command and option
descriptions (translated when the commands are synced)."""

import asyncio
import logging
from typing import Any, Awaitable, Optional

import discord
from discord import app_commands

from bot.core.errors import UserError
from bot.core.messages import FALLBACK_LOCALE
from bot.frontends.discord.delivery import TRANSIENT
from bot.frontends.discord.strings import STRINGS, explain, render
from bot.frontends.text import clip

log = logging.getLogger(__name__)

ACK_SECONDS = 2.0  # Discord wants an answer within 3 s; work that takes longer is deferred first
MESSAGE_LIMIT = 2000  # characters in one Discord message


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


async def text_reply(interaction: discord.Interaction, work: Awaitable[str]) -> None:
    """An ephemeral answer with the text `work` comes to, or with why it was refused."""
    try:
        text = await acknowledged(interaction, work, ephemeral=True)
    except UserError as error:
        text = explain(error, str(interaction.locale))
    await answer(interaction, text, ephemeral=True)
