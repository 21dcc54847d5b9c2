"""What the Telegram bot writes from several texts (its strings are in strings.py): status lines,
waiting times, captions and failures, within Telegram's sizes."""

from __future__ import annotations

from bot.core.jobs import CANCELLED, Job, short_id
from bot.core.service import JobView
from bot.frontends.telegram.strings import render
from bot.frontends.text import clip, job_error

MAX_TEXT = 4096  # characters in a message
MAX_CAPTION = 1024  # characters in a photo caption
MAX_ALERT = 200  # characters in the answer to a button press
PROGRESS_BAR = 10


def eta(seconds: float | None, locale: str | None) -> str:
    if seconds is None:
        return ""
    if seconds < 90:
        return render("tg_eta_seconds", locale, seconds=max(1, round(seconds)))
    return render("tg_eta_minutes", locale, minutes=round(seconds / 60))


def status_line(view: JobView, locale: str | None) -> str:
    """The progress message of a job that has not finished: queued, starting or step n of m."""
    job = short_id(view.job.public_id)
    if view.position:  # 0: just taken by the worker
        line = render("tg_status_queued", locale, job=job, position=view.position)
    elif view.step is None or not view.total:
        line = render("tg_status_starting", locale, job=job)
    else:
        filled = round(PROGRESS_BAR * view.step / view.total)
        bar = "▓" * filled + "░" * (PROGRESS_BAR - filled)
        line = render("tg_status_progress", locale, job=job, step=view.step, total=view.total, bar=bar)
    remaining = eta(view.eta_seconds, locale)
    return f"{line} · {remaining}" if remaining else line


def failure_text(job: Job, locale: str | None) -> str:
    """Why a job did not produce images: cancelled, or its error in the user's language."""
    if job.status == CANCELLED:
        return render("tg_cancelled", locale, job=short_id(job.public_id))
    return clip(render("tg_failed", locale, job=short_id(job.public_id), error=job_error(job, locale) or "?"), MAX_TEXT)


def caption(job: Job, locale: str | None) -> str:
    """The parameters of a result, prompt first; the prompt is shortened to fit 1024 characters."""
    request = job.request
    seeds = ", ".join(str(image.seed) for image in job.images) or str(request.seed)
    tail = [render("tg_caption_params", locale, job=short_id(job.public_id), model=request.model, width=request.width,
                   height=request.height, steps=request.steps, guidance=f"{request.guidance:g}",
                   scheduler=request.scheduler),
            render("tg_caption_seeds", locale, seeds=seeds)]
    if request.negative_prompt:
        tail.insert(0, render("tg_caption_negative", locale, negative=clip(request.negative_prompt, 200)))
    rest = "\n".join(tail)
    room = MAX_CAPTION - len(rest) - 1
    return clip(f"{clip(request.prompt, max(room, 1))}\n{rest}", MAX_CAPTION)
