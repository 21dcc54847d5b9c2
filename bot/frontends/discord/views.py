"""Buttons under each result: reroll, V1-V4 (variations), U1-U4 (upscale) and delete.

They are persistent: the custom id carries the action, the job id and the image index, and one
`DynamicItem` class registered in `setup_hook` answers every such button, so buttons under
messages sent before a restart keep working. The job itself is read from the store on each click.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.core.jobs import Job
from bot.frontends.discord.strings import render

ACTIONS = {"reroll": "reroll", "var": "variation", "up": "upscale", "del": "delete"}
MAX_INDEXED = 4  # U1-U4 and V1-V4: one button per image of a grid of up to four


class ResultButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"imagebot:(?P<action>reroll|var|up|del):(?P<job>[0-9]{1,19})(?::(?P<index>[0-9]))?"):
    def __init__(self, action: str, job_id: int, index: int = 0, label: str = "", row: int | None = None) -> None:
        custom_id = f"imagebot:{action}:{job_id}" + (f":{index}" if action in ("var", "up") else "")
        style = discord.ButtonStyle.danger if action == "del" else (
            discord.ButtonStyle.primary if action == "up" else discord.ButtonStyle.secondary)
        super().__init__(discord.ui.Button(label=label or action, style=style, custom_id=custom_id), row=row)
        self.action = action
        self.job_id = job_id
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> "ResultButton":
        return cls(match["action"], int(match["job"]), int(match["index"] or 0), label=item.label or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        frontend: Any = interaction.client.frontend  # type: ignore[attr-defined]
        await frontend.commands.on_button(interaction, ACTIONS[self.action], self.job_id, self.index)


def result_view(job: Job, locale: str | None) -> discord.ui.View:
    """U and V buttons for each image (up to four), then reroll and delete; five per row."""
    view = discord.ui.View(timeout=None)
    images = min(len(job.images), MAX_INDEXED)
    for index in range(images):
        view.add_item(ResultButton("up", job.id, index, render("dc_button_upscale", locale, index=index + 1), row=0))
    for index in range(images):
        view.add_item(ResultButton("var", job.id, index, render("dc_button_variation", locale, index=index + 1), row=1))
    view.add_item(ResultButton("reroll", job.id, label=render("dc_button_reroll", locale), row=2))
    view.add_item(ResultButton("del", job.id, label=render("dc_button_delete", locale), row=2))
    return view

