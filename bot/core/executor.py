"""The seam between the queue and whatever runs generations.

The worker hands a batch to an `Executor` and gets one outcome per job back. Today that is a
local GPU thread (`bot.executors.local.LocalExecutor`); remote GPU workers can implement the same
interface later while SQLite stays the source of truth.
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


@dataclass(frozen=True)
class StepProgress:
    job_ids: tuple[int, ...]
    step: int
    total: int
    previews: dict[int, bytes] = field(default_factory=dict)  # job id -> small JPEG of its first image


ProgressSink = Callable[[StepProgress], None]
CancelProbe = Callable[[int], bool]


class Executor(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe,
                  timeout: float) -> list[Outcome]: ...

    def loaded_model(self) -> str | None: ...

    def seconds_per_step(self, model: str) -> float | None: ...

    def metrics(self) -> dict[str, Any]: ...
