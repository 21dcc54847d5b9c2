"""How long until a job is done: from measured seconds per image-step and what is ahead of it.

The executor measures seconds per image and step for each model it has run. A waiting job's
estimate is what is left of the running batch, plus the jobs ahead of it, plus its own work.
The jobs ahead are counted, not added up one by one (that would cost the length of the queue):
each counts as the mean work of the waiting jobs, exact when the queue holds similar jobs.
No measurement yet for a model that is waiting means no estimate (None), never a made-up one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

SecondsPerStep = Callable[[str], "float | None"]


@dataclass
class RunningBatch:
    """The batch on the executor now, as its progress reports describe it."""

    job_ids: tuple[int, ...]
    started: float  # time.monotonic()
    step: int = 0
    total: int = 0
    previews: dict[int, bytes] = field(default_factory=dict)

    def remaining_seconds(self, now: float | None = None) -> float | None:
        """Extrapolated from the steps done so far; None before the first step is reported."""
        if not self.total:
            return None
        elapsed = (time.monotonic() if now is None else now) - self.started
        return elapsed / max(self.step, 1) * max(0, self.total - self.step)


class EtaEstimator:
    def __init__(self, seconds_per_step: SecondsPerStep) -> None:
        self.seconds_per_step = seconds_per_step

    def job_seconds(self, model: str, images: int, steps: int) -> float | None:
        per_step = self.seconds_per_step(model)
        return None if per_step is None else per_step * images * steps

    def mean_waiting_seconds(self, image_steps: dict[str, int], waiting: int) -> float | None:
        """The mean work of a waiting job, from per-model sums of images x steps."""
        if not waiting:
            return 0.0
        total = 0.0
        for model, work in image_steps.items():
            per_step = self.seconds_per_step(model)
            if per_step is None:
                return None
            total += per_step * work
        return total / waiting

    def waiting(self, position: int, own_seconds: float | None, mean_seconds: float | None,
                running: RunningBatch | None) -> float | None:
        """Seconds until a waiting job at `position` (1 = next) is done."""
        before = 0.0 if running is None else running.remaining_seconds()
        if before is None or own_seconds is None or mean_seconds is None:
            return None
        return before + (position - 1) * mean_seconds + own_seconds

    def running(self, model: str, images: int, batch: RunningBatch) -> float | None:
        """Seconds until a job of the running batch is done."""
        per_step = self.seconds_per_step(model)
        if per_step is None or not batch.total:
            return None
        return per_step * images * max(0, batch.total - batch.step)
