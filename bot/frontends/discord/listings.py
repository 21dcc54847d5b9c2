"""/queue, /history and /model's list in Discord's words; what they show is decided in
bot/frontends/listings.py, the same for every chat."""

from __future__ import annotations

from bot.frontends.discord.strings import render
from bot.frontends.listings import BROKEN, DISABLED, STARTING, WAITING, HistoryLine, ModelList, QueuedLine
from bot.frontends.text import clip

PROMPT_CHARS = 80  # of each job's prompt in a list


def queue_text(lines: list[QueuedLine], locale: str | None) -> str:
    if not lines:
        return render("dc_queue_empty", locale)
    return "\n".join(f"{_queued(line, locale)} {quote(line.prompt)}" for line in lines)


def _queued(line: QueuedLine, locale: str | None) -> str:
    if line.state == WAITING:
        text = (render("dc_queue_waiting", locale, job=line.job, position=line.position) if line.position
                else render("dc_queue_waiting_unplaced", locale, job=line.job))
    elif line.state == STARTING:
        text = render("dc_starting", locale, job=line.job)
    else:
        text = render("dc_queue_running", locale, job=line.job, step=line.step, total=line.total)
    if line.eta_seconds:
        text += " " + render("dc_eta", locale, seconds=round(line.eta_seconds))
    return text


def history_text(lines: list[HistoryLine], locale: str | None) -> str:
    if not lines:
        return render("dc_history_empty", locale)
    return "\n".join(render("dc_history_item", locale, job=line.job, status=render(f"dc_status_{line.status}", locale),
                            prompt=quote(line.prompt)) for line in lines)


def models_text(listing: ModelList, locale: str | None) -> str:
    if not listing.models:
        return render("dc_models_none", locale)
    lines = [render("dc_models_header", locale, default=listing.default_here)]
    for model in listing.models:
        tags = []
        if model.default:
            tags.append(render("dc_tag_default", locale))
        if model.loaded:
            tags.append(render("dc_tag_loaded", locale))
        if model.availability == BROKEN:
            tags.append(render("dc_tag_broken", locale, error=model.error))
        elif model.availability == DISABLED:
            tags.append(render("dc_tag_disabled", locale))
        line = f"• **{model.name}**" + (f" · {model.family}" if model.family else "")
        line += f" ({', '.join(tags)})" if tags else ""
        if model.description:
            line += f": {model.description}"
        lines.append(line)
    return "\n".join(lines)


def quote(prompt: str, limit: int = PROMPT_CHARS) -> str:
    return "“" + clip(prompt.replace("\n", " "), limit) + "”"
