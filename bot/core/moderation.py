"""What may not be asked for: one blocklist for every frontend.

A blocked word counts only in the prompt itself (not in what to leave out, `--no ...`), as a whole
word or phrase, ignoring case. Places meant for adult content (Discord's age-restricted channels)
are exempt; the frontend says so in the request's `Origin`.
"""

from __future__ import annotations

import re
from typing import Iterable

from bot.core.errors import UserError
from bot.core.jobs import Origin


def blocked_word(text: str, blocklist: Iterable[str]) -> str | None:
    """The first blocklist entry found as a whole word (or phrase) in `text`, case-insensitively."""
    folded = text.casefold()
    for entry in blocklist:
        word = entry.strip().casefold()
        if word and re.search(rf"(?<!\w){re.escape(word)}(?!\w)", folded):
            return entry.strip()
    return None


def check_prompt(prompt: str, origin: Origin, blocklist: Iterable[str]) -> None:
    """Refuse a prompt with a blocked word, unless it comes from a place for adult content."""
    if origin.adult_content:
        return
    word = blocked_word(prompt, blocklist)
    if word is not None:
        raise UserError("blocked_word", word=word)
