"""Buttons under each result: reroll, V1-V4 (variations), U1-U4 (upscale) and delete.

They are persistent: the custom id carries the action, the job's public id and the image index, and
one `DynamicItem` class registered in `setup_hook` answers every such button, so buttons under
messages sent before a restart keep working. The job itself is read from the store on each click.

Buttons made before jobs had public ids carry the internal (integer) id instead; they keep working,
with the same checks as new ones (only the owner or an admin deletes), since they are already out
there under old results and the id in them is one Discord shows to nobody.
"""

from __future__ import annotations

import re
from typing import Any

import discord

from bot.core.jobs import Job, is_public_id
from bot.core.service import JobRef
from bot.frontends.discord.strings import render

ACTIONS = {"reroll": "reroll", "var": "variation", "up": "upscale", "del": "delete"}
MAX_INDEXED = 4  # U1-U4 and V1-V4: one button per image of a grid of up to four


class ResultButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"imagebot:(?P<action>reroll|var|up|del):(?P<job>[0-9a-f]{24}|[0-9]{1,19})"
                            r"(?::(?P<index>[0-9]))?"):
    def __init__(self, action: str, job: JobRef, index: int = 0, label: str = "", row: int | None = None) -> None:
        custom_id = f"imagebot:{action}:{job}" + (f":{index}" if action in ("var", "up") else "")
        style = discord.ButtonStyle.danger if action == "del" else (
            discord.ButtonStyle.primary if action == "up" else discord.ButtonStyle.secondary)
        super().__init__(discord.ui.Button(label=label or action, style=style, custom_id=custom_id), row=row)
        self.action = action
        self.job = job  # the public id; an int on buttons of older versions
        self.index = index

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button,
                             match: re.Match[str]) -> "ResultButton":
        job = match["job"]
        return cls(match["action"], job if is_public_id(job) else int(job), int(match["index"] or 0),
                   label=item.label or "")

    async def callback(self, interaction: discord.Interaction) -> None:
        frontend: Any = interaction.client.frontend  # type: ignore[attr-defined]
        await frontend.commands.on_button(interaction, ACTIONS[self.action], self.job, self.index)


def result_view(job: Job, locale: str | None) -> discord.ui.View:
    """U and V buttons for each image (up to four), then reroll and delete; five per row."""
    view = discord.ui.View(timeout=None)
    images = min(len(job.images), MAX_INDEXED)
    ref = job.public_id
    for index in range(images):
        view.add_item(ResultButton("up", ref, index, render("dc_button_upscale", locale, index=index + 1), row=0))
    for index in range(images):
        view.add_item(ResultButton("var", ref, index, render("dc_button_variation", locale, index=index + 1), row=1))
    view.add_item(ResultButton("reroll", ref, label=render("dc_button_reroll", locale), row=2))
    view.add_item(ResultButton("del", ref, label=render("dc_button_delete", locale), row=2))
    return view

