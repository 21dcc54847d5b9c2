"""One batch on one engine: what both executors run where the GPU is (the local GPU thread, a Ray
replica). Progress goes to `progress`, images are written under `outputs`, and every way a batch
can end becomes one `Outcome` per job."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

from bot.core.errors import Cancelled, UserError, model_refusal
from bot.core.executor import BatchItem, CancelProbe, Outcome, StepProgress
from bot.core.jobs import ImageResult
from bot.models.errors import ModelUnavailable
from bot.models.registry import Registry
from bot.outputs import save_result

log = logging.getLogger(__name__)

PREVIEW_INTERVAL = 1.0  # seconds between preview images of one batch


def run_batch(engine, registry: Registry, items: Sequence[BatchItem], progress: Callable[[StepProgress], None],
              is_cancelled: CancelProbe, should_stop: Callable[[], bool], outputs: Path, version: str,
              deadline: float, timeout: float) -> list[Outcome]:
    """Generate `items` on `engine` (in the thread that owns it). `should_stop` is asked at every
    step; past `deadline` (time.monotonic()) a stop counts as a time-out, else as cancelled."""
    from bot.engine.preview import latent_preview  # torch: only ever where the engine runs

    ids = tuple(item.job_id for item in items)
    last_preview = 0.0

    def on_step(update) -> None:
        nonlocal last_preview
        previews: dict[int, bytes] = {}
        now = time.monotonic()
        if update.latents is not None and (now - last_preview >= PREVIEW_INTERVAL or update.step == update.total):
            last_preview = now
            first = 0
            for item in items:
                preview = latent_preview(update.latents[first], update.family)
                if preview is not None:
                    previews[item.job_id] = preview
                first += item.request.count
        progress(StepProgress(ids, update.step, update.total, previews))

    try:
        engine.refresh()
        try:
            registry.get(items[0].request.model)  # a variant gone from the store is a refusal
        except ModelUnavailable as unavailable:
            raise model_refusal(unavailable) from None  # answered as a refusal below, like the engine's
        results = engine.generate([item.request for item in items], on_progress=on_step, should_cancel=should_stop)
    except Cancelled:
        if time.monotonic() > deadline:
            return timed_out(items, timeout)
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
        saved = save_result(result, version, outputs, item.file_stem)
        outcomes.append(Outcome(
            item.job_id,
            images=tuple(ImageResult(path.name, seed) for path, seed in zip(saved.images, result.seeds)),
            grid=saved.grid.name if saved.grid else None,
        ))
    return outcomes


def timed_out(items: Sequence[BatchItem], timeout: float) -> list[Outcome]:
    seconds = max(1, round(timeout))
    return [Outcome(i.job_id, error=f"timed out after {seconds} s", error_key="timed_out",
                    error_params={"seconds": seconds}) for i in items]
