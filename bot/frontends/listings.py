"""What a chat's /queue, /history and /model list show, decided once for every chat frontend.

Each function turns the service's data into plain facts (which jobs, in which state, at which place
in line; which models can be used, which are disabled or broken, which is the default); Discord and
Telegram only put those facts into their own words. Deciding here keeps the two from drifting apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from bot.core.jobs import QUEUED, RUNNING, Job, Origin, short_id
from bot.core.service import JobView
from bot.frontends.text import without_paths

# The states of an unfinished job in a queue listing.
WAITING = "waiting"  # queued: its status says so, whether or not its place in line is known yet
STARTING = "starting"  # taken by the worker, no step done yet
RUNNING_STEPS = "running"  # running, with its step count

# The availability of a model in a model list.
USABLE = "usable"
DISABLED = "disabled"  # turned off by an admin: not an error, so no error is shown
BROKEN = "broken"  # cannot be loaded: the error says why


@dataclass(frozen=True)
class QueuedLine:
    """One unfinished job of the caller's."""
    job: str  # the short id chats show, "a3f09c"
    prompt: str
    state: str  # WAITING, STARTING or RUNNING_STEPS
    position: int | None = None  # a waiting job's place in line, when known
    step: int | None = None  # a running job's progress
    total: int | None = None
    eta_seconds: float | None = None


@dataclass(frozen=True)
class HistoryLine:
    """One of the caller's recent jobs, finished or not."""
    job: str
    status: str  # the job's status: queued, running, done, failed or cancelled
    prompt: str
    model: str
    seeds: tuple[int, ...]  # of the images made; empty when none were


@dataclass(frozen=True)
class ModelLine:
    name: str
    description: str
    availability: str  # USABLE, DISABLED or BROKEN
    error: str  # why a broken model cannot be used, without the server's paths; "" otherwise
    loaded: bool
    default: bool  # the model the caller's requests use when they name none
    family: str = ""  # what kind of model it is, e.g. "FLUX.1 [dev]" ("" when its variant cannot be read)


@dataclass(frozen=True)
class ModelList:
    models: tuple[ModelLine, ...]
    default_here: str  # the caller's chat's default model
    default_everywhere: str  # the default of chats that set none


def queue_lines(views: Iterable[JobView]) -> list[QueuedLine]:
    """The caller's unfinished jobs in the order they were submitted.

    A job is waiting when its status is queued, even while its place is not known (0 or None: the
    worker is taking it); a running job shows its steps once the first one is reported."""
    lines = []
    for view in sorted(views, key=lambda v: v.job.id):
        job = view.job
        common = {"job": short_id(job.public_id), "prompt": job.request.prompt, "eta_seconds": view.eta_seconds}
        if job.status == QUEUED:
            lines.append(QueuedLine(state=WAITING, position=view.position or None, **common))
        elif job.status == RUNNING and view.step is not None and view.total:
            lines.append(QueuedLine(state=RUNNING_STEPS, step=view.step, total=view.total, **common))
        else:
            lines.append(QueuedLine(state=STARTING, **common))
    return lines


def history_lines(jobs: Iterable[Job]) -> list[HistoryLine]:
    """The caller's recent jobs, newest first as the store gives them."""
    return [HistoryLine(job=short_id(job.public_id), status=job.status, prompt=job.request.prompt,
                        model=job.request.model, seeds=tuple(image.seed for image in job.images)) for job in jobs]


def model_lines(variants: Iterable[Mapping[str, Any]]) -> list[ModelLine]:
    """`Service.list_variants` as a list's lines."""
    return [ModelLine(name=v["name"], description=v["description"] or "", availability=_availability(v),
                      error=without_paths(v["error"] or "") if v["status"] == "broken" else "",
                      loaded=bool(v["loaded"]), default=bool(v["default"]),
                      family=(v.get("family") or {}).get("label", "")) for v in variants]


def usable_names(variants: Iterable[Mapping[str, Any]]) -> list[str]:
    """The models a request may name (what the model pickers offer)."""
    return [line.name for line in model_lines(variants) if line.availability == USABLE]


def _availability(variant: Mapping[str, Any]) -> str:
    return {"ready": USABLE, "disabled": DISABLED}.get(variant["status"], BROKEN)


# --- read from the service ---------------------------------------------------------------------------


async def read_queue(service: Any, origin: Origin) -> list[QueuedLine]:
    return queue_lines(await service.queue_of(origin))


async def read_history(service: Any, origin: Origin, limit: int) -> list[HistoryLine]:
    return history_lines(await service.history(origin, limit))


async def read_models(service: Any, origin: Origin) -> ModelList:
    variants = await service.list_variants(origin)
    return ModelList(models=tuple(model_lines(variants)), default_here=await service.default_model(origin),
                     default_everywhere=await service.default_model())
