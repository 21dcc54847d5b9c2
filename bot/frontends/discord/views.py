"""Buttons under each result: U1-U4 (upscale), V1-V4 (strong variations), subtle variations, Remix
(a modal to edit the prompt, then a strong variation with it), reroll and delete.

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
from bot.core.prompt_syntax import prompt_with_lora_tags
from bot.core.service import JobRef
from bot.frontends.discord.strings import render

ACTIONS = {"reroll": "reroll", "var": "vary_strong", "vsub": "vary_subtle", "remix": "remix", "up": "upscale",
           "del": "delete"}
INDEXED = ("var", "vsub", "remix", "up")  # buttons that name one image of the result
MAX_INDEXED = 4  # U1-U4 and V1-V4: one button per image of a grid of up to four
PROMPT_INPUT_LIMIT = 4000  # Discord's longest text input in a modal


class ResultButton(discord.ui.DynamicItem[discord.ui.Button],
                   template=r"imagebot:(?P<action>reroll|var|vsub|remix|up|del):(?P<job>[0-9a-f]{24}|[0-9]{1,19})"
                            r"(?::(?P<index>[0-9]))?"):
    def __init__(self, action: str, job: JobRef, index: int = 0, label: str = "", row: int | None = None) -> None:
        custom_id = f"imagebot:{action}:{job}" + (f":{index}" if action in INDEXED else "")
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
    """For one image: U1, Vary (Strong), Vary (Subtle), Remix; for a grid, a row each of U, V
    (strong), subtle and Remix buttons, one per image (up to four); then reroll and delete."""
    view = discord.ui.View(timeout=None)
    images = min(len(job.images), MAX_INDEXED)
    ref = job.public_id
    if images == 1:
        view.add_item(ResultButton("up", ref, 0, render("dc_button_upscale", locale, index=1), row=0))
        for action, key in (("var", "dc_button_vary_strong"), ("vsub", "dc_button_vary_subtle"),
                            ("remix", "dc_button_remix")):
            view.add_item(ResultButton(action, ref, 0, render(key, locale), row=0))
        last_row = 1
    else:
        rows = (("up", "dc_button_upscale"), ("var", "dc_button_variation"), ("vsub", "dc_button_subtle_n"),
                ("remix", "dc_button_remix_n"))
        for row, (action, key) in enumerate(rows):
            for index in range(images):
                view.add_item(ResultButton(action, ref, index, render(key, locale, index=index + 1), row=row))
        last_row = len(rows)
    view.add_item(ResultButton("reroll", ref, label=render("dc_button_reroll", locale), row=last_row))
    view.add_item(ResultButton("del", ref, label=render("dc_button_delete", locale), row=last_row))
    return view


class RemixModal(discord.ui.Modal):
    """Remix: the prompt to edit (LoRAs shown as tags, flags allowed), then a strong variation of
    image `index` drawn with it."""

    def __init__(self, job: Job, index: int, locale: str | None) -> None:
        super().__init__(title=render("dc_remix_title", locale, index=index + 1),
                         custom_id=f"imagebot:remixed:{job.public_id}:{index}", timeout=900)
        self.job_ref = job.public_id
        self.index = index
        text = prompt_with_lora_tags(job.request.prompt, job.request.loras)
        self.prompt = discord.ui.TextInput(label=render("dc_remix_label", locale), style=discord.TextStyle.paragraph,
                                           custom_id="prompt", default=text[:PROMPT_INPUT_LIMIT],
                                           max_length=PROMPT_INPUT_LIMIT)
        self.add_item(self.prompt)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        frontend: Any = interaction.client.frontend  # type: ignore[attr-defined]
        await frontend.commands.on_button(interaction, "remix", self.job_ref, self.index, prompt=self.prompt.value)

