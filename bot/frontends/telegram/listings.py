"""/queue, /history and /model's list in Telegram's words; what they show is decided in
bot/frontends/listings.py, the same for every chat."""

from __future__ import annotations

from bot.frontends.listings import BROKEN, DISABLED, STARTING, WAITING, HistoryLine, ModelList, QueuedLine
from bot.frontends.telegram.strings import render
from bot.frontends.telegram.texts import MAX_TEXT, eta
from bot.frontends.text import clip

PROMPT_CHARS = 60  # of each job's prompt in a list
ERROR_CHARS = 200  # of why a model cannot be used


def queue_text(lines: list[QueuedLine], locale: str | None) -> str:
    if not lines:
        return render("tg_queue_empty", locale)
    out = [render("tg_queue_title", locale)]
    for line in lines:
        text = _queued(line, locale)
        remaining = eta(line.eta_seconds, locale)
        out.append(f"{text} · {remaining}" if remaining else text)
    return "\n".join(out)


def _queued(line: QueuedLine, locale: str | None) -> str:
    prompt = clip(line.prompt, PROMPT_CHARS)
    if line.state == WAITING:
        if line.position:
            return render("tg_queue_waiting", locale, job=line.job, position=line.position, prompt=prompt)
        return render("tg_queue_waiting_unplaced", locale, job=line.job, prompt=prompt)
    if line.state == STARTING:
        return render("tg_queue_starting", locale, job=line.job, prompt=prompt)
    return render("tg_queue_running", locale, job=line.job, step=line.step, total=line.total, prompt=prompt)


def history_text(lines: list[HistoryLine], locale: str | None) -> str:
    if not lines:
        return render("tg_history_empty", locale)
    out = [render("tg_history_title", locale)]
    for line in lines:
        out.append(render("tg_history_item", locale, job=line.job, status=render(f"tg_state_{line.status}", locale),
                          model=line.model, seeds=", ".join(map(str, line.seeds)) or "-",
                          prompt=clip(line.prompt, PROMPT_CHARS)))
    return "\n".join(out)


def models_text(listing: ModelList, locale: str | None, *, is_admin: bool) -> str:
    lines = [render("tg_models_title", locale, current=listing.default_here, default=listing.default_everywhere)]
    for model in listing.models:
        description = model.description or "-"
        if model.availability == BROKEN:
            lines.append(render("tg_models_item_broken", locale, name=model.name, error=clip(model.error, ERROR_CHARS)))
        elif model.availability == DISABLED:
            lines.append(render("tg_models_item_disabled", locale, name=model.name, description=description,
                                family=model.family or "?"))
        else:
            key = "tg_models_item_loaded" if model.loaded else "tg_models_item"
            lines.append(render(key, locale, name=model.name, description=description, family=model.family or "?"))
    if len(lines) == 1:
        lines.append(render("tg_none", locale))
    lines.append("" if is_admin else render("tg_models_hint", locale))
    return clip("\n".join(lines).strip(), MAX_TEXT)
