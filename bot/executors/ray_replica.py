"""What runs inside a Ray Serve replica: one engine on the replica's GPU (or CPU), fed batches by
`imagebot serve` through `bot.executors.ray_serve`.

A call streams back `StepProgress` messages while the batch runs, then one `Reply` with the
outcomes and the bytes of every file written (PNGs with their parameters, grids, manifests), which
the caller writes into its own outputs folder. Cancelling the call stops the engine at its next
step. Variants are multiplexed (`@serve.multiplexed`): Serve routes a batch to a replica that holds
its variant, and the least recently used one is unloaded when a replica holds too many.

Nothing here imports torch until a replica starts (the engine is built on its own thread).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

from bot.config import EngineConfig
from bot.core.executor import BatchItem, Outcome, StepProgress
from bot.executors.batch import run_batch

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.1  # seconds between step messages of one call


@dataclass(frozen=True)
class ReplicaSettings:
    """Everything a replica needs, sent once when the application is deployed."""

    engine: EngineConfig
    models_dir: str
    variants: Mapping[str, Any] = field(default_factory=dict)
    rescan_seconds: float = 2.0
    allow_download: bool = True
    version: str = ""


@dataclass(frozen=True)
class Reply:
    """The end of one call: outcomes, the files to write (name -> bytes, manifests last), and what
    the replica is like now (for /metrics and /api/models)."""

    outcomes: list[Outcome]
    files: dict[str, bytes]
    replica: str
    node: str
    resident: list[str]
    seconds_per_step: dict[str, float]
    work_seconds: float  # time spent generating and writing, to tell dispatch overhead apart


class _Variant:
    """A variant Serve counts as loaded on this replica. Serve calls `__del__` when it evicts it
    (least recently used): the engine frees its memory then."""

    def __init__(self, replica: "GeneratorReplica", name: str) -> None:
        self.replica, self.name, self.released = replica, name, False

    def __del__(self) -> None:
        if not self.released:  # Serve calls it on eviction; the garbage collector may call it again
            self.released = True
            self.replica.unload(self.name)


class GeneratorReplica:
    """The deployment's body; `generator_class` adds the multiplexed loader Serve routes by."""

    def __init__(self, settings: ReplicaSettings) -> None:
        from bot.models.registry import Registry

        self.settings = settings
        self.registry = Registry(Path(settings.models_dir), settings.variants, settings.rescan_seconds)
        self.registry.scan()
        self.node = socket.gethostname()
        self.replica = _replica_id()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replica-engine")
        self.engine = self._thread.submit(self._make_engine).result()

    def _make_engine(self):
        from bot.engine.engine import Engine

        engine = Engine(self.registry, self.settings.engine, allow_download=self.settings.allow_download,
                        want_latents=True)
        log.info("replica %s: engine ready on %s (%s)", self.replica, engine.device, engine.dtype)
        return engine

    async def _variant(self, name: str) -> _Variant:
        # The weights load on the first batch, on the engine's thread; this only tells Serve (and so
        # its router) that this replica now holds `name`.
        return _Variant(self, name)

    def unload(self, name: str) -> None:
        self._thread.submit(self.engine.unload, name)

    def info(self) -> dict[str, Any]:
        return {"replica": self.replica, "node": self.node, "resident": list(self.engine.loaded())}

    async def generate(self, items: list[BatchItem], timeout: float) -> AsyncIterator[StepProgress | Reply]:
        from ray import serve

        await self.variant(serve.get_multiplexed_model_id())  # added by generator_class
        loop = asyncio.get_running_loop()
        updates: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        last_sent = 0.0

        def progress(update: StepProgress) -> None:
            # Each message is a Ray object: send a step at most every PROGRESS_INTERVAL, but always
            # one with previews and the last.
            nonlocal last_sent
            now = time.monotonic()
            if update.previews or update.step >= update.total or now - last_sent >= PROGRESS_INTERVAL:
                last_sent = now
                loop.call_soon_threadsafe(updates.put_nowait, update)

        work = loop.run_in_executor(self._thread, self._run, items, progress, stop, timeout)
        try:
            while not work.done():
                next_update = asyncio.ensure_future(updates.get())
                await asyncio.wait({next_update, work}, return_when=asyncio.FIRST_COMPLETED)
                if next_update.done():
                    yield next_update.result()
                else:
                    next_update.cancel()
            while not updates.empty():
                yield updates.get_nowait()
            outcomes, files, seconds = await work
            yield Reply(outcomes, files, self.replica, self.node, list(self.engine.loaded()),
                        dict(self.engine.stats.seconds_per_step), seconds)
        finally:
            stop.set()  # the caller cancelled (or went away): the engine stops at its next step

    def _run(self, items: list[BatchItem], progress, stop: threading.Event,
             timeout: float) -> tuple[list[Outcome], dict[str, bytes], float]:
        started = time.monotonic()
        deadline = started + timeout
        with tempfile.TemporaryDirectory(prefix="imagebot-replica-") as folder:
            outcomes = run_batch(self.engine, self.registry, items, progress, lambda job_id: False,
                                 lambda: stop.is_set() or time.monotonic() > deadline, Path(folder),
                                 self.settings.version, deadline, timeout)
            # Images first, manifests (.json) last: written in this order, a manifest on disk
            # still means its whole batch is there.
            paths = sorted(Path(folder).iterdir(), key=lambda path: (path.suffix == ".json", path.name))
            files = {path.name: path.read_bytes() for path in paths}
        return outcomes, files, time.monotonic() - started


def generator_class(max_models: int) -> type:
    """The deployment class, with Serve's multiplexed loader keeping at most `max_models` variants
    per replica (the limit is fixed when the method is decorated, hence a class per setting)."""
    from ray import serve

    class Generator(GeneratorReplica):
        @serve.multiplexed(max_num_models_per_replica=max_models)
        async def variant(self, name: str) -> _Variant:
            return await self._variant(name)

    return Generator


def _replica_id() -> str:
    try:
        from ray import serve

        replica = serve.get_replica_context().replica_id
        return str(getattr(replica, "unique_id", replica))
    except Exception:  # outside Serve (a unit test): any stable name will do
        return socket.gethostname()
