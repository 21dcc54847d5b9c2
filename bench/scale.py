"""Scaling benchmark: the Ray executor with 1 and 2 CPU replicas (one torch thread each) on the demo
model, and its dispatch overhead per job against the local executor; all numbers from one run.

    python bench/scale.py [--jobs 16] [--steps 20] [--repeat 2] [--model demo]

Everything runs as `imagebot serve` runs it (bot.stack.open_stack: real store, scheduler, worker),
on a local Ray instance started here with `ray.init(num_cpus=2)`; jobs are submitted to the service
and counted when their images are on disk here. `max_batch` is 1, so each job is one call.

Prints:
  throughput  `--jobs` single-image jobs from 4 users submitted at once, jobs/s with 1 replica
              and with 2 (target: 2 replicas >= 1.6 x one), medians of `--repeat` interleaved runs
  overhead    one job at a time (submit -> done), median seconds per job through Ray (1 replica)
              over the local executor, and that difference as a share of the local job
              (target: <= 10 % of a 20-step 32 px job); also Ray's own measure of the call time
              not spent generating (routing, transfer, writing the PNGs here)
  driver      CPU time the serving process spends per job (everything but generating): the
              jobs per second one core of the machine that runs `imagebot serve` can feed
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import ray  # noqa: E402
from ray import serve  # noqa: E402

from bot.config import config_from_dict  # noqa: E402
from bot.core.jobs import Origin  # noqa: E402
from bot.stack import open_stack  # noqa: E402

PROMPTS = ["a red circle on a blue background", "a yellow triangle on a purple background",
           "a green square on a white background", "a white circle on a black background"]


def config(state: Path, model: str, steps: int, executor: dict | None):
    settings = {
        "storage": {"state_dir": str(state), "models_dir": str(REPO / "models")},
        "models": {"default": model, "rescan_seconds": 60.0},
        "engine": {"device": "cpu", "threads": 1, "max_batch": 1},
        "queue": {"batch_window": 0.0, "max_queued_per_user": 0, "max_jobs_per_hour": 0},
    }
    if executor is not None:
        settings["executor"] = {"kind": "ray", "address": "auto", "gpus_per_replica": 0.0, "cpus_per_replica": 1.0,
                                **executor}
    return config_from_dict(settings)


async def until_done(events, jobs: set[int]) -> None:
    """Follow the service's events (no polling: this process's CPU time is measured) until every
    job in `jobs` has ended."""
    while jobs:
        event = await events.next(timeout=600)
        if event["type"] in ("done", "failed", "cancelled") and event["job"] in jobs:
            if event["type"] != "done":
                raise RuntimeError(f"job {event['job']} ended {event['type']}: {event.get('error')}")
            jobs.discard(event["job"])


async def throughput(stack, jobs: int, steps: int) -> float:
    service = stack.service
    events = service.subscribe(platform="web")
    started = time.perf_counter()
    submitted = [await service.submit(f"{PROMPTS[n % len(PROMPTS)]} --steps {steps} --seed {n}",
                                      Origin("web", f"user{n % 4}", chat_id="web")) for n in range(jobs)]
    await until_done(events, {s.job_id for s in submitted})
    events.close()
    return jobs / (time.perf_counter() - started)


async def one_by_one(stack, jobs: int, steps: int) -> list[float]:
    times = []
    events = stack.service.subscribe(platform="web")
    for n in range(jobs):
        started = time.perf_counter()
        s = await stack.service.submit(f"{PROMPTS[n % len(PROMPTS)]} --steps {steps} --seed {n}",
                                       Origin("web", "solo", chat_id="web"))
        await until_done(events, {s.job_id})
        times.append(time.perf_counter() - started)
    events.close()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--model", default="demo")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rates: dict[int, list[float]] = {1: [], 2: []}
    per_job: dict[str, list[float]] = {"local": [], "ray": []}
    dispatch: list[float] = []
    driver_cpu: list[float] = []  # CPU seconds of this process (the driver: the whole service) per job
    with tempfile.TemporaryDirectory(prefix="imagebot-scale-") as folder:
        for round_ in range(args.repeat):
            for replicas in (1, 2):
                stack = await open_stack(config(Path(folder) / f"r{round_}-{replicas}", args.model, args.steps,
                                                {"replicas_min": replicas, "replicas_max": replicas}))
                await throughput(stack, 4 * replicas, args.steps)  # every replica loads the model and warms up
                cpu = time.process_time()
                rates[replicas].append(await throughput(stack, args.jobs, args.steps))
                driver_cpu.append((time.process_time() - cpu) / args.jobs)
                if replicas == 1:
                    # One job at a time, alternating with the local executor (both warm), so that
                    # whatever else the machine does weighs on both alike.
                    local = await open_stack(config(Path(folder) / f"r{round_}-local", args.model, args.steps, None))
                    await one_by_one(local, 2, args.steps)
                    calls_before, seconds_before = stack.executor.calls, stack.executor.dispatch_seconds
                    for _ in range(args.jobs // 2):
                        per_job["ray"] += await one_by_one(stack, 1, args.steps)
                        per_job["local"] += await one_by_one(local, 1, args.steps)
                    dispatch.append((stack.executor.dispatch_seconds - seconds_before)
                                    / (stack.executor.calls - calls_before))
                    await local.close()
                await stack.close()
                await asyncio.to_thread(serve.delete, "imagebot")
    ray.shutdown()

    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    local_s, ray_s = statistics.median(per_job["local"]), statistics.median(per_job["ray"])
    print(f"demo model '{args.model}', {args.steps} steps, 32 px, one torch thread per replica; "
          f"{args.jobs} jobs, {args.repeat} rounds")
    print(f"throughput  1 replica {one:.2f} jobs/s, 2 replicas {two:.2f} jobs/s: ratio {two / one:.2f} (target >= 1.6)")
    print(f"per job     local executor {local_s * 1000:.0f} ms, Ray (1 replica) {ray_s * 1000:.0f} ms: "
          f"overhead {(ray_s - local_s) * 1000:.0f} ms = {(ray_s - local_s) / local_s:.1%} (target <= 10%)")
    print(f"            Ray call time not spent generating (median over rounds of the mean): "
          f"{statistics.median(dispatch) * 1000:.1f} ms = {statistics.median(dispatch) / local_s:.1%} of a local job")
    cpu = statistics.median(driver_cpu)
    print(f"driver      CPU time of the serving process per job (submit, schedule, dispatch, write the PNG, "
          f"record): {cpu * 1000:.1f} ms, so one core dispatches about {1 / cpu:.0f} jobs/s")


if __name__ == "__main__":
    asyncio.run(main())
