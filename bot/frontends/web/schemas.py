"""The API's JSON: the bodies it takes (checked strictly) and jobs as it shows them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from bot.core.jobs import Job
from bot.core.service import JobView, Submitted
from bot.frontends.text import job_error

# Strict: JSON true/false must not pass as 1/0; strings go through the same parser as chat flags.
Scalar = StrictInt | StrictFloat | StrictStr | None
JobId = int  # any integer; ids that cannot exist are simply not found


class JobIn(BaseModel):
    """A generation request. `prompt` may carry inline flags (`--ar 16:9 --seed 42 ...`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=20_000)
    negative_prompt: str | None = Field(default=None, max_length=20_000)
    model: str | None = None
    seed: Scalar = None
    steps: Scalar = None
    guidance: Scalar = None
    width: Scalar = None
    height: Scalar = None
    size: str | None = None
    aspect: str | None = None
    count: Scalar = None
    scheduler: str | None = None


class DeriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(default=0, ge=0, le=63)


class DefaultModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    scope: Literal["global"] = "global"  # per-chat defaults are set from the chat frontends


def submitted_json(submitted: Submitted) -> dict[str, Any]:
    """A job just queued: its id, its place in line and the request as it will run."""
    return {"id": submitted.job_id, "position": submitted.position, "eta": submitted.eta_seconds,
            "request": submitted.request.to_dict()}


def job_json(job: Job, locale: str | None, *, position: int | None = None, eta: float | None = None,
             step: int | None = None, total: int | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": job.status,
        "position": position,
        "eta": eta,
        "progress": {"step": step, "total": total} if step is not None else None,
        "error": job_error(job, locale),
        "request": job.request.to_dict(),
        "images": [{"url": f"/api/images/{image.file}", "seed": image.seed} for image in job.images],
        "grid": f"/api/images/{job.grid}" if job.grid else None,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def view_json(view: JobView, locale: str | None) -> dict[str, Any]:
    """A job with what only the service knows: its place in line, its progress."""
    return job_json(view.job, locale, position=view.position, eta=view.eta_seconds, step=view.step, total=view.total)
