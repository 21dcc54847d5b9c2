"""The local executor: one dedicated thread owns torch and the engine, and runs the batches.

The asyncio side never blocks on it: a batch goes to the thread, progress comes back through
`call_soon_threadsafe`, and the outcome is awaited. A generation that hangs past its timeout is
abandoned with its thread (a thread stuck inside a kernel cannot be stopped); a fresh thread and
engine take over so the queue keeps moving.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

from bot.config import EngineConfig
from bot.core.errors import Cancelled, UserError
from bot.core.executor import BatchItem, CancelProbe, Outcome, ProgressSink, StepProgress
from bot.core.jobs import ImageResult
from bot.models.registry import Registry
from bot.outputs import save_result

log = logging.getLogger(__name__)

PREVIEW_INTERVAL = 1.0  # seconds between preview images of one batch
GRACE_SECONDS = 30.0  # beyond the job timeout, before a silent generation counts as hung


class LocalExecutor:
    def __init__(self, registry: Registry, config: EngineConfig, outputs: Path, *, allow_download: bool = True,
                 version: str = "") -> None:
        self.registry = registry
        self.config = config
        self.outputs = Path(outputs)
        self.allow_download = allow_download
        self.version = version
        self._thread: ThreadPoolExecutor | None = None
        self._engine = None
        self._lock = threading.Lock()
        self._batch_sizes: dict[int, int] = {}
        self._hung = 0
        self._closing = False

    async def start(self) -> None:
        self._closing = False
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-worker")
        await asyncio.get_running_loop().run_in_executor(self._thread, self._make_engine)

    async def close(self) -> None:
        self._closing = True  # a batch still running stops at its next step
        if self._thread is not None:
            self._thread.shutdown(wait=False, cancel_futures=True)
            self._thread = None

    def _make_engine(self):
        from bot.engine.engine import Engine

        engine = Engine(self.registry, self.config, allow_download=self.allow_download, want_latents=True)
        with self._lock:
            self._engine = engine
        log.info("generation engine ready on %s (%s)", engine.device, engine.dtype)
        return engine

    # --- what the queue asks -------------------------------------------------------------------

    def loaded_model(self) -> str | None:
        engine = self._engine
        if engine is None:
            return None
        loaded = engine.loaded()
        return next(reversed(loaded), None) if loaded else None

    def loaded_models(self) -> dict[str, list[str]]:
        engine = self._engine
        return engine.loaded() if engine is not None else {}

    def seconds_per_step(self, model: str) -> float | None:
        engine = self._engine
        if engine is None:
            return None
        spec = self.registry.entry(model)
        key = spec.spec.base if spec and spec.spec and spec.spec.kind == "lora" else model
        return engine.stats.seconds_per_step.get(model) or engine.stats.seconds_per_step.get(key or model)

    def metrics(self) -> dict[str, Any]:
        engine = self._engine
        stats = engine.stats if engine is not None else None
        return {
            "model_loads": stats.model_loads if stats else 0,
            "model_load_seconds": stats.model_load_seconds if stats else 0.0,
            "batches": stats.batches if stats else 0,
            "images": stats.images if stats else 0,
            "oom_retries": stats.oom_retries if stats else 0,
            "seconds_per_step": dict(stats.seconds_per_step) if stats else {},
            "seconds_per_image": dict(stats.seconds_per_image) if stats else {},
            "batch_sizes": dict(self._batch_sizes),
            "hung_generations": self._hung,
        }

    async def run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe,
                  timeout: float) -> list[Outcome]:
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + timeout
        thread = self._thread
        assert thread is not None, "start() the executor first"

        def progress(update: StepProgress) -> None:
            if not loop.is_closed():
                loop.call_soon_threadsafe(on_progress, update)

        work = loop.run_in_executor(thread, self._run_batch, list(items), progress, is_cancelled, deadline, timeout)
        try:
            return await asyncio.wait_for(work, timeout + GRACE_SECONDS)
        except asyncio.TimeoutError:
            # The thread is stuck inside the library; leave it and carry on with a new one.
            self._hung += 1
            log.error("generation of jobs %s hung past %.0f s; starting a fresh worker thread",
                      [i.job_id for i in items], timeout + GRACE_SECONDS)
            thread.shutdown(wait=False, cancel_futures=True)
            await self.start()
            return [Outcome(i.job_id, error=f"timed out after {max(1, round(timeout))} s", error_key="timed_out",
                            error_params={"seconds": max(1, round(timeout))}) for i in items]

    # --- in the worker thread ------------------------------------------------------------------

    def _run_batch(self, items: list[BatchItem], progress: Callable[[StepProgress], None],
                   is_cancelled: CancelProbe, deadline: float, timeout: float) -> list[Outcome]:
        from bot.engine.preview import latent_preview  # torch: only ever on the worker thread

        engine = self._engine or self._make_engine()
        ids = tuple(item.job_id for item in items)
        images = sum(item.request.count for item in items)
        self._batch_sizes[images] = self._batch_sizes.get(images, 0) + 1
        last_preview = 0.0
        xl = False

        def on_step(update) -> None:
            nonlocal last_preview
            previews: dict[int, bytes] = {}
            now = time.monotonic()
            if update.latents is not None and (now - last_preview >= PREVIEW_INTERVAL or update.step == update.total):
                last_preview = now
                first = 0
                for item in items:
                    previews[item.job_id] = latent_preview(update.latents[first], xl=xl)
                    first += item.request.count
            progress(StepProgress(ids, update.step, update.total, previews))

        def should_stop() -> bool:
            return self._closing or time.monotonic() > deadline or all(is_cancelled(job_id) for job_id in ids)

        try:
            engine.refresh()
            spec = self.registry.get(items[0].request.model)
            xl = spec.arch == "sdxl"
            results = engine.generate([item.request for item in items], on_progress=on_step, should_cancel=should_stop)
        except Cancelled:
            if time.monotonic() > deadline:
                return [Outcome(i.job_id, error=f"timed out after {max(1, round(timeout))} s", error_key="timed_out",
                                error_params={"seconds": max(1, round(timeout))}) for i in items]
            return [Outcome(i.job_id, cancelled=True) for i in items]
        except UserError as error:
            return [Outcome(i.job_id, error=str(error), error_key=error.key, error_params=error.params) for i in items]
        except Exception as error:  # a crash in the library: this batch fails, the worker goes on
            log.error("generation of jobs %s failed:\n%s", ids, traceback.format_exc())
            message = f"generation failed: {type(error).__name__}: {error}"
            return [Outcome(i.job_id, error=message, error_key="generation_failed",
                            error_params={"error": f"{type(error).__name__}: {error}"}) for i in items]

        outcomes = []
        for item, result in zip(items, results):
            if is_cancelled(item.job_id):
                outcomes.append(Outcome(item.job_id, cancelled=True))
                continue
            saved = save_result(result, self.version, self.outputs, item.file_stem)
            outcomes.append(Outcome(
                item.job_id,
                images=tuple(ImageResult(path.name, seed) for path, seed in zip(saved.images, result.seeds)),
                grid=saved.grid.name if saved.grid else None,
            ))
        return outcomes

