"""Texts every frontend writes the same way, whatever its platform: a job's error, a shortened text."""

from __future__ import annotations

from bot.core.jobs import Job
from bot.core.messages import CORE


def job_error(job: Job, locale: str | None) -> str | None:
    """Why a job failed, in the user's language where the core's catalogue words it (errors of
    older versions, or of a library, keep the English text the store has); None without an error."""
    if job.error_key and job.error_key in CORE:
        return CORE.render(job.error_key, locale, **job.error_params)
    return job.error


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis showing where (platforms refuse longer texts)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
