"""Texts every frontend writes the same way, whatever its platform: a job's error, a shortened text."""

from __future__ import annotations

import re

from bot.core.errors import UserError
from bot.core.jobs import Job, is_public_id, short_id
from bot.core.messages import CORE, Catalogue


# An absolute path in an error text (a model file that failed to load, a missing folder), POSIX or
# Windows; not the path part of a URL (after "scheme:/" or a host name).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/\\~])(?:/|[A-Za-z]:\\)(?:[^\s/\\'\"(),;:]+[/\\])+([^\s/\\'\"(),;:]*)")


def without_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part ("/srv/bot/models/sdxl/unet.bin" ->
    "unet.bin"): chat users see which file, never how the server's disk is laid out."""
    return _ABSOLUTE_PATH.sub(lambda match: match[1] or "…", text)


class ChatCatalogue(Catalogue):
    """A chat frontend's texts. Its refusals name a job the way its other texts do, by the short
    form of the public id ("#a3f09c") where the core's refusal carries the whole id, and show no
    server path (an `error` from a library may quote one)."""

    def explain(self, error: UserError, locale: str | None) -> str:
        params = dict(error.params)
        job = params.get("job")
        if isinstance(job, str) and is_public_id(job):
            params["job"] = short_id(job)
        if isinstance(params.get("error"), str):
            params["error"] = without_paths(params["error"])
        return self.render(error.key, locale, **params)


def job_error(job: Job, locale: str | None) -> str | None:
    """Why a job failed, in the user's language where the core's catalogue words it (errors of
    older versions, or of a library, keep the English text the store has); None without an error.
    A chat shows it to the user, so server paths (a model file that would not load) are cut."""
    if job.error_key and job.error_key in CORE:
        text = CORE.render(job.error_key, locale, **job.error_params)
    else:
        text = job.error
    return without_paths(text) if text else text


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, an ellipsis showing where (platforms refuse longer texts)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
