"""Texts every frontend writes the same way, whatever its platform: a job's error, a shortened text."""

from __future__ import annotations

from bot.core.errors import UserError
from bot.core.jobs import Job, is_public_id, short_id
from bot.core.messages import CORE, Catalogue


class ChatCatalogue(Catalogue):
    """A chat frontend's texts. Its refusals name a job the way its other texts do: by the short
    form of the public id ("#a3f09c"), where the core's refusal carries the whole id."""

    def explain(self, error: UserError, locale: str | None) -> str:
        job = error.params.get("job")
        if isinstance(job, str) and is_public_id(job):
            return self.render(error.key, locale, **{**error.params, "job": short_id(job)})
        return super().explain(error, locale)


def job_error(job: Job, locale: str | None) -> str | None:
    """Why a job failed, in the user's language where the core's catalogue words it (errors of
    older versions, or of a library, keep the English text the store has); None without an error."""
    if job.error_key and job.error_key in CORE:
        return CORE.render(job.error_key, locale, **job.error_params)
    return job.error


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis showing where (platforms refuse longer texts)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
