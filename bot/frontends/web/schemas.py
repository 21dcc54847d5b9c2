"""The API's JSON: the bodies it takes (checked strictly) and jobs as it shows them."""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from bot.core.jobs import Job
from bot.core.request import GenerationRequest
from bot.core.service import JobView, Submitted
from bot.frontends.text import job_error

# Strict: JSON true/false must not pass as 1/0; strings go through the same parser as chat flags.
ABSOLUTE_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+[^\s'\",;:)/\\]*")  # two or more parts
Scalar = StrictInt | StrictFloat | StrictStr | None
# A job's public id: random, so holding it is what lets one read the job (a capability). Any
# other text, an internal (integer) id included, is simply not found.
JobId = str


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
    loras: str | list[str | list[str | float]] | None = None  # "name:0.8, other" or ["name:0.8"] or [["name", 0.8]]
    refiner: Scalar = None  # where the model's refiner takes over (0.7), 0 or "off" for none
    fast: StrictBool | None = None  # the model's fast mode (LCM): few steps, low guidance
    image: str | None = Field(default=None, max_length=64)  # a handle from POST /api/uploads: an image prompt
    mask: str | None = Field(default=None, max_length=64)  # ... and a mask for it (white is redrawn)
    strength: Scalar = None  # with an image: how far it may change, 0.1-1


class DeriveIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(default=0, ge=0, le=63)
    prompt: str | None = Field(default=None, max_length=20_000)  # remix: the edited prompt


class DefaultModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    scope: Literal["global"] = "global"  # per-chat defaults are set from the chat frontends


class BanIn(BaseModel):
    """Whom to ban: "web:<client key>" (or "web:anon-<address>", "web:user:<account>"), "telegram:<user id>",
    "discord:<user id>", or "address:<IP>" for every caller from a network address (bot/core/bans.py)."""

    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=r"^(web|telegram|discord|address):[A-Za-z0-9_.:-]{1,64}$")
    reason: str = Field(min_length=1, max_length=300)


class SignInIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=256)


class UnbanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(pattern=r"^(web|telegram|discord|address):[A-Za-z0-9_.:-]{1,64}$")


def submitted_json(submitted: Submitted) -> dict[str, Any]:
    """A job just queued: its id, its place in line and the request as it will run."""
    return {"id": submitted.public_id, "position": submitted.position, "eta": submitted.eta_seconds,
            "request": request_json(submitted.request)}


def job_json(job: Job, locale: str | None, *, position: int | None = None, eta: float | None = None,
             step: int | None = None, total: int | None = None) -> dict[str, Any]:
    return {
        "id": job.public_id,
        "status": job.status,
        "position": position,
        "eta": eta,
        "progress": {"step": step, "total": total} if step is not None else None,
        "error": without_paths(job_error(job, locale)),
        "request": request_json(job.request),
        "images": [{"url": f"/api/images/{image.file}", "seed": image.seed} for image in job.images],
        "grid": f"/api/images/{job.grid}" if job.grid else None,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
    }


def request_json(request: GenerationRequest) -> dict[str, Any]:
    """The request as it runs, less the server's file system: a source image shows as its file
    name (which is also its URL under /api/images/), never the folder it lies in."""
    data = request.to_dict()
    for key in ("init_image", "mask_image"):
        if data.get(key):
            data[key] = PurePath(data[key]).name
    return data


def without_paths(text: str | None) -> str | None:
    """An error text with any absolute path cut to its last part: the server's layout is not the
    caller's business (an exception message from the generator may carry one)."""
    return ABSOLUTE_PATH.sub(lambda match: re.split(r"[/\\]", match.group())[-1], text) if text else text


def view_json(view: JobView, locale: str | None) -> dict[str, Any]:
    """A job with what only the service knows: its place in line, its progress."""
    return job_json(view.job, locale, position=view.position, eta=view.eta_seconds, step=view.step, total=view.total)
