"""/describe's answer: the suggested prompts, numbered, with a button per number that imagines it.

The buttons carry only the number; the prompt is read back from the message they are under, so
they keep working after a restart and never run into Telegram's 64-byte limit on button data.
"""

from __future__ import annotations

import re

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.frontends.telegram.strings import render

BUTTON_PATTERN = r"^ds:[1-9]$"
_LINE = re.compile(r"^([1-9])\. (.+)$", re.M)


def is_describe(caption: str | None) -> bool:
    first = (caption or "").split(maxsplit=1)[0] if caption and caption.strip() else ""
    return first.partition("@")[0].lower() == "/describe"


def text(prompts: list[str], locale: str | None) -> str:
    lines = [render("tg_describe_title", locale)]
    lines += [f"{number}. {prompt}" for number, prompt in enumerate(prompts, 1)]
    lines.append(render("tg_describe_hint", locale))
    return "\n".join(lines)


def keyboard(count: int) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(f"🎨 {n}", callback_data=f"ds:{n}")
                                  for n in range(1, count + 1)]])


def prompt_of(message_text: str | None, data: str | None) -> str | None:
    """The prompt numbered as the pressed button, from the answer's text."""
    if not message_text or not data or not re.fullmatch(BUTTON_PATTERN, data):
        return None
    wanted = data.split(":")[1]
    for number, prompt in _LINE.findall(message_text):
        if number == wanted:
            return prompt.strip()
    return None
