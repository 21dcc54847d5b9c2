"""/describe's answer on Discord: the suggested prompts, numbered, with a button per number that
imagines it. The button carries only the number; the prompt is read back from the message it is
under, so it keeps working after a restart."""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.frontends.discord.strings import render

_LINE = re.compile(r"^\*\*([1-9])\.\*\* (.+)$", re.M)


class DescribeButton(discord.ui.DynamicItem[discord.ui.Button], template=r"imagebot:describe:(?P<number>[1-9])"):
    def __init__(self, number: int) -> None:
        super().__init__(discord.ui.Button(label=f"🎨 {number}", style=discord.ButtonStyle.secondary,
                                           custom_id=f"imagebot:describe:{number}"))
        self.number = number

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> "DescribeButton":
        return cls(int(match["number"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        frontend: Any = interaction.client.frontend  # type: ignore[attr-defined]
        prompt = prompt_of(interaction.message.content if interaction.message else "", self.number)
        await frontend.commands.imagine_described(interaction, prompt)


def text(prompts: list[str], locale: str | None) -> str:
    lines = [render("dc_describe_title", locale)]
    lines += [f"**{number}.** {discord.utils.escape_markdown(prompt)}" for number, prompt in enumerate(prompts, 1)]
    lines.append(render("dc_describe_hint", locale))
    return "\n".join(lines)


def view(count: int) -> discord.ui.View:
    buttons = discord.ui.View(timeout=None)
    for number in range(1, count + 1):
        buttons.add_item(DescribeButton(number))
    return buttons


def prompt_of(content: str, number: int) -> str | None:
    for found, prompt in _LINE.findall(content or ""):
        if int(found) == number:
            return prompt.replace("\\", "").strip()
    return None
