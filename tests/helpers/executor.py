"""A stand-in executor and model store for tests and benchmarks of the queue: no torch.

`FakeExecutor` honours the executor contract (progress per step, cancellation, outcomes per job)
and takes `seconds_per_image_step` of real time per image and step, so the queue, the worker and
the estimates behave as with a real model. It can be paused (`gate`, and `hold_at_step` to freeze a batch half-way), told to raise on the next
batches (`failures`), and records what it ran (`batches`).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Sequence

from bot.core.executor import BatchItem, CancelProbe, Outcome, ProgressSink, StepProgress
from bot.core.jobs import ImageResult


class FakeExecutor:
    def __init__(self, seconds_per_image_step: float = 0.0, measured: bool = True, capacity: int = 1) -> None:
        self.capacity = capacity
        self.per_step = seconds_per_image_step
        self.measured = measured  # False: no timing known yet (as before a model's first batch)
        self.gate = asyncio.Event()  # cleared: batches wait before their first step
        self.gate.set()
        self.failures: list[BaseException] = []  # raised by the next batches, one each
        self.batches: list[list[int]] = []
        self.hold_at_step: int | None = None  # after reporting this step, wait for the gate again
        self.started = asyncio.Event()  # set when a batch has begun (after the gate)
        self.lost = 0  # the next this many batches end with their jobs lost (Outcome.requeue)
        self.in_flight = 0
        self.most_in_flight = 0
        self._loaded: str | None = None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.gate.set()

    async def run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe,
                  timeout: float) -> list[Outcome]:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            return await self._run(items, on_progress, is_cancelled)
        finally:
            self.in_flight -= 1

    async def _run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe) -> list[Outcome]:
        await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        ids = tuple(item.job_id for item in items)
        self.batches.append(list(ids))
        self._loaded = items[0].request.model
        self.started.set()
        images = sum(item.request.count for item in items)
        steps = items[0].request.steps
        for step in range(1, steps + 1):
            if all(is_cancelled(job_id) for job_id in ids):
                break
            await asyncio.sleep(self.per_step * images)
            on_progress(StepProgress(ids, step, steps))
            if step == self.hold_at_step:
                self.gate.clear()
                await self.gate.wait()
        if self.lost:
            self.lost -= 1
            return [Outcome(item.job_id, error="the replica died", requeue=True) for item in items]
        return [self._outcome(item, is_cancelled(item.job_id)) for item in items]

    @staticmethod
    def _outcome(item: BatchItem, cancelled: bool) -> Outcome:
        if cancelled:
            return Outcome(item.job_id, cancelled=True)
        seed = item.request.seed if item.request.seed is not None else 0
        images = tuple(ImageResult(f"{item.file_stem}-{n}.png", seed + n) for n in range(item.request.count))
        return Outcome(item.job_id, images=images)

    def loaded_model(self) -> str | None:
        return self._loaded

    def loaded_models(self) -> dict[str, list[str]]:
        return {self._loaded: []} if self._loaded else {}

    def seconds_per_step(self, model: str) -> float | None:
        return self.per_step if self.measured else None

    def metrics(self) -> dict[str, Any]:
        return {"batches": len(self.batches)}


def fake_model_store(models_dir: Path, *names: str, steps: int = 3) -> Path:
    """A model store whose variants the registry accepts (a pipeline folder's index file);
    only a FakeExecutor can "run" them."""
    for name in names or ("demo",):
        folder = models_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}', encoding="utf-8")
        (folder / "variant.toml").write_text(f'kind = "pipeline"\n[defaults]\nsteps = {steps}\n'
                                             'width = 32\nheight = 32\n', encoding="utf-8")
    return models_dir
