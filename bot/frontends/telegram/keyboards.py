"""Inline keyboards and the callback data behind their buttons.

Callback data names an action and a job's public id (plus an image index), nothing else: it
carries no secret, fits Telegram's 64 bytes (24 characters of id, and an album's message ids, leave
room), and everything else is read from the store when the button is pressed, so buttons keep
working after a restart. Buttons made before jobs had public ids name the internal (integer) id;
they keep working for whoever may use them (delete and cancel: the owner or an admin, as ever).

    r:<job>                 reroll (same settings, new seed)
    v:<job>:<index>         strong variation of image <index> (counted from 0)
    s:<job>:<index>         subtle variation of image <index>
    m:<job>:<index>         remix image <index>: the bot asks for the new prompt
    u:<job>:<index>         upscale 2x of image <index>
    p:<job>                 send the lossless PNG files as documents
    x:<job>[:<id>:<steps>]  delete the result; for an album, the album's message ids
                            (the first id, then the gaps to the next ones: "1001:1.1.1")
    c:<job>                 cancel a job that is still waiting or running
"""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.jobs import is_public_id
from bot.core.service import JobRef

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bot.frontends.telegram.strings import render

MAX_CALLBACK_BYTES = 64  # Telegram's limit on callback_data
ACTIONS = {"r": "reroll", "v": "vary_strong", "s": "vary_subtle", "m": "remix", "u": "upscale", "p": "png",
           "x": "delete", "c": "cancel"}
INDEXED = ("vary_strong", "vary_subtle", "remix", "upscale")  # actions on one image of a result
BUTTONS_PER_ROW = 5


@dataclass(frozen=True)
class Button:
    action: str  # a value of ACTIONS
    job: JobRef  # the public id; an int on buttons of older versions
    index: int = 0
    message_ids: tuple[int, ...] = ()  # delete: the album messages besides the one pressed


def encode(action: str, job: str, *rest: object) -> str:
    code = next(code for code, name in ACTIONS.items() if name == action)
    data = ":".join(str(part) for part in (code, job, *rest))
    if len(data.encode()) > MAX_CALLBACK_BYTES:
        raise ValueError(f"callback data over {MAX_CALLBACK_BYTES} bytes: {data!r}")
    return data


def decode(data: str | None) -> Button | None:
    """The button that `data` names, or None for anything this bot did not make."""
    if not data or len(data.encode()) > MAX_CALLBACK_BYTES:
        return None
    parts = data.split(":")
    if parts[0] not in ACTIONS or len(parts) < 2:
        return None
    if is_public_id(parts[1]):
        job: JobRef = parts[1]
    elif parts[1].isdigit():  # a button from before public ids
        job = int(parts[1])
    else:
        return None
    action = ACTIONS[parts[0]]
    try:
        if action in INDEXED and len(parts) == 3:
            return Button(action, job, index=int(parts[2]))
        if action == "delete" and len(parts) == 4:
            ids = [int(parts[2])]
            for step in parts[3].split("."):
                ids.append(ids[-1] + int(step))
            return Button(action, job, message_ids=tuple(ids))
    except ValueError:
        return None
    if len(parts) == 2 and action not in INDEXED:
        return Button(action, job)
    return None


def album_delete_data(job: str, message_ids: list[int]) -> str:
    """Delete data that also names the album's messages; without them when they do not fit."""
    first, rest = message_ids[0], message_ids[1:]
    steps = ".".join(str(b - a) for a, b in zip(message_ids, rest))
    try:
        return encode("delete", job, first, steps) if rest else encode("delete", job, first, "0")
    except ValueError:  # ids far apart: only the keyboard message can be deleted
        return encode("delete", job)


def single_result(job: str, locale: str | None) -> InlineKeyboardMarkup:
    """Under one photo: subtle and strong variations, remix; reroll, upscale; PNG and delete."""
    def button(key: str, action: str, *rest: object) -> InlineKeyboardButton:
        return InlineKeyboardButton(render(key, locale), callback_data=encode(action, job, *rest))

    return InlineKeyboardMarkup([
        [button("tg_button_vary_subtle", "vary_subtle", 0), button("tg_button_vary_strong", "vary_strong", 0),
         button("tg_button_remix", "remix", 0)],
        [button("tg_button_reroll", "reroll"), button("tg_button_upscale", "upscale", 0)],
        [button("tg_button_png", "png"), button("tg_button_delete", "delete")],
    ])


def album_result(job: str, count: int, album_ids: list[int], locale: str | None) -> InlineKeyboardMarkup:
    """Under an album (albums cannot carry buttons themselves): V1..Vn (strong), S1..Sn (subtle),
    R1..Rn (remix), U1..Un, then the rest."""
    rows: list[list[InlineKeyboardButton]] = []
    for action, key in (("vary_strong", "tg_button_variation_n"), ("vary_subtle", "tg_button_subtle_n"),
                        ("remix", "tg_button_remix_n"), ("upscale", "tg_button_upscale_n")):
        buttons = [InlineKeyboardButton(render(key, locale, n=i + 1), callback_data=encode(action, job, i))
                   for i in range(count)]
        rows += [buttons[i:i + BUTTONS_PER_ROW] for i in range(0, len(buttons), BUTTONS_PER_ROW)]
    rows.append([InlineKeyboardButton(render("tg_button_reroll", locale), callback_data=encode("reroll", job)),
                 InlineKeyboardButton(render("tg_button_png", locale), callback_data=encode("png", job)),
                 InlineKeyboardButton(render("tg_button_delete", locale),
                                      callback_data=album_delete_data(job, album_ids))])
    return InlineKeyboardMarkup(rows)


def progress(job: str, locale: str | None) -> InlineKeyboardMarkup:
    return InlineKeyboardMarkup([[InlineKeyboardButton(render("tg_button_cancel", locale),
                                                       callback_data=encode("cancel", job))]])
