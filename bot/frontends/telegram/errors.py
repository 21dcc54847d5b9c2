"""Telegram errors as log lines: python-telegram-bot's InvalidToken quotes the token itself."""

from __future__ import annotations

from telegram.error import InvalidToken


def loggable(error: BaseException) -> str:
    """The error for a log line, never with the bot token in it."""
    if isinstance(error, InvalidToken):
        return "the Bot API refused the token"
    return str(error)
