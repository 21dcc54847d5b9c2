"""The seam between the queue and whatever runs generations.

The worker hands a batch to an `Executor` and gets one outcome per job back: a local GPU thread per
device (`bot.executors.local.LocalExecutor`) or Ray Serve replicas on a cluster
(`bot.executors.ray_serve.RayExecutor`). `capacity` says how many batches it takes at once; SQLite
stays the source of truth either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from bot.core.jobs import ImageResult
from bot.core.request import GenerationRequest


@dataclass(frozen=True)
class BatchItem:
    job_id: int
    request: GenerationRequest
    public_id: str = ""

    @property
    def file_stem(self) -> str:
        """What the job's image files are named after: its public id, so that a file's URL cannot
        be guessed from another's (internal ids count up). `job<id>` only for items built without one."""
        return self.public_id or f"job{self.job_id}"


@dataclass(frozen=True)
class Outcome:
    """How one job of a batch ended. Exactly one of images / error / cancelled applies."""

    job_id: int
    images: tuple[ImageResult, ...] = ()
    grid: str | None = None
    error: str | None = None
    error_key: str | None = None
    error_params: dict[str, Any] = field(default_factory=dict)
    cancelled: bool = False
    # The job was lost with whatever ran it (a replica or node died, a call dropped): the worker
    # queues it again within its attempts. `error` says what happened, for the log.
    requeue: bool = False


class ExecutorUnavailable(Exception):
    """The executor cannot run anything now (its cluster is unreachable). Raised by `run` before
    any work started: the batch's jobs go back to the queue as they were, no attempt counted."""


@dataclass(frozen=True)
class StepProgress:
    job_ids: tuple[int, ...]
    step: int
    total: int
    previews: dict[int, bytes] = field(default_factory=dict)  # job id -> small JPEG of its first image


ProgressSink = Callable[[StepProgress], None]
CancelProbe = Callable[[int], bool]


class Executor(Protocol):
    capacity: int  # batches it runs at once (an executor without it is taken to run one)

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe,
                  timeout: float) -> list[Outcome]: ...

    def loaded_model(self) -> str | None: ...

    def seconds_per_step(self, model: str) -> float | None: ...

    def metrics(self) -> dict[str, Any]: ...
