"""The local executor: one thread per device owns torch and an engine there, and runs batches.

`[engine] devices` lists the devices (`["cuda:0", "cuda:1"]`); without it, the one `[engine] device`.
Each device is a lane with its own thread, engine and batches, so the executor's `capacity` is the
number of devices and the worker keeps that many batches in flight. A batch goes to a free lane,
preferably one that already holds its model.

The asyncio side never blocks on a lane: a batch goes to its thread, progress comes back through
`call_soon_threadsafe`, and the outcome is awaited. A generation that hangs past its timeout is
abandoned with its thread (a thread stuck inside a kernel cannot be stopped); a fresh thread and
engine take over that lane so the queue keeps moving.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.config import EngineConfig
from bot.core.executor import BatchItem, CancelProbe, Outcome, ProgressSink, StepProgress
from bot.executors.batch import run_batch, timed_out
from bot.models.registry import Registry

log = logging.getLogger(__name__)

GRACE_SECONDS = 30.0  # beyond the job timeout, before a silent generation counts as hung


@dataclasses.dataclass
class _Lane:
    """One device: its thread, its engine (made on that thread), and whether a batch is on it."""

    config: EngineConfig
    thread: ThreadPoolExecutor | None = None
    engine: Any = None
    busy: bool = False


class LocalExecutor:
    def __init__(self, registry: Registry, config: EngineConfig, outputs: Path, *, allow_download: bool = True,
                 version: str = "") -> None:
        self.registry = registry
        self.config = config
        self.outputs = Path(outputs)
        self.allow_download = allow_download
        self.version = version
        devices = config.devices or (config.device,)
        self._lanes = [_Lane(dataclasses.replace(config, device=device, devices=())) for device in devices]
        self.capacity = len(self._lanes)
        self._lock = threading.Lock()
        self._batch_sizes: dict[int, int] = {}
        self._hung = 0
        self._closing = False

    async def start(self) -> None:
        self._closing = False
        loop = asyncio.get_running_loop()
        for index, lane in enumerate(self._lanes):
            lane.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"gpu-worker-{index}")
        await asyncio.gather(*(loop.run_in_executor(lane.thread, self._make_engine, lane) for lane in self._lanes))

    async def close(self) -> None:
        self._closing = True  # a batch still running stops at its next step
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.shutdown(wait=False, cancel_futures=True)
                lane.thread = None

    @property
    def _thread(self) -> ThreadPoolExecutor | None:
        """The first lane's thread (with one device, the only one)."""
        return self._lanes[0].thread

    @property
    def _engine(self):
        return self._lanes[0].engine

    def _make_engine(self, lane: _Lane):
        from bot.engine.engine import Engine

        engine = Engine(self.registry, lane.config, allow_download=self.allow_download, want_latents=True)
        with self._lock:
            lane.engine = engine
        log.info("generation engine ready on %s (%s)", engine.device, engine.dtype)
        return engine

    # --- what the queue asks -------------------------------------------------------------------

    def loaded_model(self) -> str | None:
        """The model most recently used on a free lane (else on any): the scheduler prefers its jobs."""
        for lane in sorted(self._lanes, key=lambda lane: lane.busy):
            loaded = lane.engine.loaded() if lane.engine is not None else {}
            if loaded:
                return next(reversed(loaded))
        return None

    def loaded_models(self) -> dict[str, list[str]]:
        merged: dict[str, list[str]] = {}
        for lane in self._lanes:
            for name, loras in (lane.engine.loaded() if lane.engine is not None else {}).items():
                merged.setdefault(name, [])
                merged[name] += [lora for lora in loras if lora not in merged[name]]
        return merged

    def placement(self) -> dict[str, list[str]]:
        """Variant -> the devices holding it."""
        where: dict[str, list[str]] = {}
        for lane in self._lanes:
            for name in (lane.engine.loaded() if lane.engine is not None else {}):
                where.setdefault(name, []).append(str(lane.engine.device))
        return where

    def seconds_per_step(self, model: str) -> float | None:
        spec = self.registry.entry(model)
        key = spec.spec.base if spec and spec.spec and spec.spec.kind == "lora" else model
        for lane in self._lanes:
            if lane.engine is not None:
                measured = lane.engine.stats.seconds_per_step.get(model) or lane.engine.stats.seconds_per_step.get(key or model)
                if measured:
                    return measured
        return None

    def metrics(self) -> dict[str, Any]:
        engines = [lane.engine for lane in self._lanes if lane.engine is not None]
        per_step: dict[str, float] = {}
        per_image: dict[str, float] = {}
        for engine in engines:
            per_step.update(engine.stats.seconds_per_step)
            per_image.update(engine.stats.seconds_per_image)
        return {
            "model_loads": sum(e.stats.model_loads for e in engines),
            "model_load_seconds": sum(e.stats.model_load_seconds for e in engines),
            "batches": sum(e.stats.batches for e in engines),
            "images": sum(e.stats.images for e in engines),
            "oom_retries": sum(e.stats.oom_retries for e in engines),
            "seconds_per_step": per_step,
            "seconds_per_image": per_image,
            "batch_sizes": dict(self._batch_sizes),
            "hung_generations": self._hung,
            "devices": len(self._lanes),
        }

    def _free_lane(self, model: str) -> _Lane:
        free = [lane for lane in self._lanes if not lane.busy]
        assert free, "the worker keeps at most `capacity` batches in flight"
        holding = [lane for lane in free if lane.engine is not None and model in lane.engine.loaded()]
        return (holding or free)[0]

    async def run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe,
                  timeout: float) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        lane = self._free_lane(items[0].request.model)
        thread = lane.thread
        assert thread is not None, "start() the executor first"

        def progress(update: StepProgress) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(on_progress, update)

        lane.busy = True
        try:
            work = loop.run_in_executor(thread, self._run_batch, list(items), progress, is_cancelled, deadline,
                                        timeout, lane)
            try:
                return await asyncio.wait_for(work, timeout + GRACE_SECONDS)
            except asyncio.TimeoutError:
                # The thread is stuck inside the library; leave it and carry on with a new one.
                self._hung += 1
                log.error("generation of jobs %s hung past %.0f s; starting a fresh worker thread",
                          [i.job_id for i in items], timeout + GRACE_SECONDS)
                thread.shutdown(wait=False, cancel_futures=True)
                lane.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-worker")
                await loop.run_in_executor(lane.thread, self._make_engine, lane)
                return timed_out(items, timeout)
        finally:
            lane.busy = False

    # --- in the lane's thread ------------------------------------------------------------------

    def _run_batch(self, items: list[BatchItem], progress: Callable[[StepProgress], None],
                   is_cancelled: CancelProbe, deadline: float, timeout: float, lane: _Lane) -> list[Outcome]:
        engine = lane.engine or self._make_engine(lane)
        ids = tuple(item.job_id for item in items)
        images = sum(item.request.count for item in items)
        self._batch_sizes[images] = self._batch_sizes.get(images, 0) + 1

        def should_stop() -> bool:
            return self._closing or time.monotonic() > deadline or all(is_cancelled(job_id) for job_id in ids)

        return run_batch(engine, self.registry, items, progress, is_cancelled, should_stop, self.outputs,
                         self.version, deadline, timeout)
