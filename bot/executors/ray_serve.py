"""The Ray executor: batches run on Ray Serve replicas (one per GPU, on any machine of a cluster)
while SQLite, here, stays the truth.

`start()` connects (`[executor] address`: "local" starts a Ray instance in this process for one
machine with several GPUs; "auto" or "HOST:6379" joins a cluster started with `ray start`) and
deploys the Serve application `imagebot` with one deployment, `Generator`
(`bot.executors.ray_replica`). Each batch is one streaming call, routed by variant name to a
replica that holds it (`multiplexed_model_id`); progress and previews stream back; the reply
carries the files, written here into the outputs folder before the worker marks the jobs done.

Failure model: a call is at most once. A call that dies with its replica or node gives its jobs
back to the queue (`Outcome.requeue`; same seed, same image). A cluster that cannot be reached
raises `ExecutorUnavailable` before anything runs, so jobs wait in SQLite, attempts untouched,
until it is back. In-flight calls are bounded by `capacity` = replicas_max x max_ongoing_requests;
the backlog stays in the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Sequence

from bot.config import Config
from bot.core.executor import BatchItem, CancelProbe, ExecutorUnavailable, Outcome, ProgressSink, StepProgress
from bot.executors.batch import timed_out
from bot.files.atomic import write_atomic
from bot.models.registry import Registry

log = logging.getLogger(__name__)

APP_NAME = "imagebot"
NAMESPACE = "imagebot"
GRACE_SECONDS = 30.0  # beyond the job timeout, before a silent call is given up
CANCEL_POLL = 0.2  # seconds between looks at whether every job of a call was cancelled


class RayExecutor:
    def __init__(self, config: Config, registry: Registry, *, version: str = "") -> None:
        self.config = config
        self.settings = config.executor
        self.registry = registry
        self.outputs = Path(config.storage.outputs_path())
        self.version = version
        self.capacity = self.settings.replicas_max * self.settings.max_ongoing_requests
        self._handle = None
        self._owns_ray = False
        self._connecting: asyncio.Lock | None = None
        self._last_model: str | None = None
        # What replicas said in their last reply: replica -> (node, variants it holds).
        self._replicas: dict[str, tuple[str, list[str]]] = {}
        self._seconds_per_step: dict[str, float] = {}
        self.routes: dict[str, set[str]] = {}  # variant -> replicas that ran its batches
        self.calls = 0
        self.lost_calls = 0  # calls that died with their replica or node (their jobs were requeued)
        self.unavailable = 0  # times the cluster could not be reached
        self.dispatch_seconds = 0.0  # call time not spent generating: routing, transfer, writing here

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            import ray  # noqa: F401
            from ray import serve  # noqa: F401
        except ImportError:
            raise RuntimeError('[executor] kind = "ray" needs Ray Serve: pip install -e ".[ray]"') from None
        self._connecting = asyncio.Lock()
        try:
            await self._ready()
        except ExecutorUnavailable as error:  # jobs wait in the queue until it can be reached
            log.warning("%s; jobs wait in the queue until it can be reached", error)

    async def close(self) -> None:
        """Leave the application running on a cluster (a restart finds its replicas warm, models
        loaded); a Ray instance this process started ends with it."""
        self._handle = None
        if self._owns_ray:
            import ray
            from ray import serve

            await asyncio.to_thread(serve.shutdown)
            await asyncio.to_thread(ray.shutdown)
            self._owns_ray = False

    async def _ready(self):
        """The handle to the application, connecting and deploying first when needed."""
        import ray

        if self._handle is not None and ray.is_initialized():
            return self._handle
        assert self._connecting is not None, "start() the executor first"
        async with self._connecting:
            if self._handle is None or not ray.is_initialized():
                try:
                    self._handle = await asyncio.to_thread(self._connect)
                except Exception as error:
                    self._handle = None
                    self.unavailable += 1
                    raise ExecutorUnavailable(f"the Ray cluster at {self.settings.address!r} is unreachable "
                                              f"({type(error).__name__}: {error})") from error
        return self._handle

    def _connect(self):
        import ray
        from ray import serve

        if not ray.is_initialized():
            if self.settings.address == "local":
                ray.init(namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
                self._owns_ray = True
            else:
                ray.init(address=self.settings.address, namespace=NAMESPACE, log_to_driver=False)
        serve.start(proxy_location="Disabled")  # batches come through handles, not HTTP
        log.info("deploying the Serve application %r on the Ray cluster at %r", APP_NAME, self.settings.address)
        return serve.run(self._application(), name=APP_NAME, route_prefix=None)

    def _application(self):
        from ray import serve

        from bot.executors.ray_replica import ReplicaSettings, generator_class

        settings = self.settings
        replica = ReplicaSettings(engine=self.config.engine,
                                  models_dir=settings.models_dir or self.config.storage.models_dir,
                                  variants=dict(self.config.variants), rescan_seconds=self.config.models.rescan_seconds,
                                  allow_download=self.config.models.allow_download, version=self.version)
        options: dict[str, Any] = {
            "name": "Generator",
            "max_ongoing_requests": settings.max_ongoing_requests,
            "ray_actor_options": {"num_gpus": settings.gpus_per_replica, "num_cpus": settings.cpus_per_replica},
        }
        if settings.replicas_min == settings.replicas_max:
            options["num_replicas"] = settings.replicas_max
        else:  # Serve adds replicas while batches wait at its router, removes them when idle
            options["autoscaling_config"] = {"min_replicas": settings.replicas_min,
                                             "max_replicas": settings.replicas_max,
                                             "target_ongoing_requests": settings.max_ongoing_requests}
        return serve.deployment(**options)(generator_class(settings.max_models_per_replica)).bind(replica)

    # --- what the queue asks -------------------------------------------------------------------

    def loaded_model(self) -> str | None:
        return self._last_model

    def loaded_models(self) -> dict[str, list[str]]:
        return {name: [] for _, resident in self._replicas.values() for name in resident}

    def placement(self) -> dict[str, list[str]]:
        """Variant -> the replicas ("node/replica") holding it, as of their last replies."""
        where: dict[str, list[str]] = {}
        for replica, (node, resident) in sorted(self._replicas.items()):
            for name in resident:
                where.setdefault(name, []).append(f"{node}/{replica}")
        return where

    def seconds_per_step(self, model: str) -> float | None:
        return self._seconds_per_step.get(model)

    def metrics(self) -> dict[str, Any]:
        return {
            "ray_replicas": len(self._replicas),
            "ray_placement": {replica: (node, list(resident)) for replica, (node, resident) in self._replicas.items()},
            "ray_calls": self.calls,
            "ray_lost_calls": self.lost_calls,
            "ray_unavailable": self.unavailable,
            "ray_dispatch_seconds_mean": self.dispatch_seconds / self.calls if self.calls else 0.0,
            "seconds_per_step": dict(self._seconds_per_step),
        }

    # --- one batch -------------------------------------------------------------------------------

    async def run(self, items: Sequence[BatchItem], on_progress: ProgressSink, is_cancelled: CancelProbe,
                  timeout: float) -> list[Outcome]:
        from bot.executors.ray_replica import Reply

        handle = await self._ready()
        model = items[0].request.model
        ids = [item.job_id for item in items]
        self._last_model = model
        started = time.monotonic()
        try:
            response = handle.options(multiplexed_model_id=model, stream=True).generate.remote(list(items), timeout)
        except Exception as error:  # nothing was sent
            self._handle = None
            self.unavailable += 1
            raise ExecutorUnavailable(f"cannot call the Ray cluster at {self.settings.address!r} "
                                      f"({type(error).__name__}: {error})") from error
        self.calls += 1
        watcher = asyncio.create_task(self._cancel_when_all_cancelled(response, ids, is_cancelled))

        async def follow() -> Reply | None:
            reply = None
            async for message in response:
                if isinstance(message, StepProgress):
                    on_progress(message)
                else:
                    reply = message
            return reply

        try:
            reply = await asyncio.wait_for(follow(), timeout + GRACE_SECONDS)
        except asyncio.TimeoutError:
            response.cancel()
            log.error("the Ray call for jobs %s gave no answer within %.0f s; cancelled", ids, timeout + GRACE_SECONDS)
            return timed_out(items, timeout)
        except Exception as error:
            if all(is_cancelled(job_id) for job_id in ids):
                return [Outcome(job_id, cancelled=True) for job_id in ids]
            return self._lost(items, error)
        finally:
            watcher.cancel()
        if reply is None:
            return self._lost(items, RuntimeError("the replica ended the call without a reply"))
        await asyncio.to_thread(self._write, reply.files)
        self._replicas[reply.replica] = (reply.node, reply.resident)
        self.routes.setdefault(model, set()).add(reply.replica)
        self._seconds_per_step.update(reply.seconds_per_step)
        self.dispatch_seconds += max(0.0, time.monotonic() - started - reply.work_seconds)
        return [Outcome(outcome.job_id, cancelled=True) if is_cancelled(outcome.job_id) and not outcome.error
                else outcome for outcome in reply.outcomes]

    def _lost(self, items: Sequence[BatchItem], error: BaseException) -> list[Outcome]:
        """The call died (replica killed, node lost, connection dropped): at most once, so the jobs
        go back to the queue. A Ray that is gone entirely is reconnected before the next call."""
        import ray

        self.lost_calls += 1
        if not ray.is_initialized():
            self._handle = None
        reason = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        log.warning("the Ray call for jobs %s was lost (%s); they go back to the queue",
                    [item.job_id for item in items], reason)
        return [Outcome(item.job_id, error=reason, requeue=True) for item in items]

    def _write(self, files: dict[str, bytes]) -> None:
        """Write the reply's files atomically, in the order the replica gave (manifests last)."""
        self.outputs.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            if "/" in name or "\\" in name or name.startswith("."):
                raise ValueError(f"a replica sent a bad file name: {name!r}")
            write_atomic(self.outputs / name, lambda f, data=data: f.write(data), binary=True)

    async def _cancel_when_all_cancelled(self, response, ids: list[int], is_cancelled: CancelProbe) -> None:
        """Every job of the call was cancelled: cancel the call, which stops the replica's engine."""
        while not all(is_cancelled(job_id) for job_id in ids):
            await asyncio.sleep(CANCEL_POLL)
        response.cancel()
