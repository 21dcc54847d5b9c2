"""Queue benchmark: what a user waits for, with 10, 1,000 and 10,000 jobs waiting.

    python bench/queue_scale.py [--levels 10,1000,10000] [--users 1000] [--samples 300]

The real service (store on disk, admission with quotas, the in-memory queue, the scheduler, the
worker) over a paused stand-in executor, so the queue only grows: the first job sits on the
executor and every later one waits. Jobs come from `--users` users in turn. At each level the
benchmark times, `--samples` times each, keeping the level constant (one job in, one out):

  submit   service.submit(): parse, defaults, quota, insert, position and ETA of the new job
  status   service.status() of a random waiting job: the row, its position and ETA
  cancel   service.cancel() of a random waiting job
  pick     choosing the next batch (Scheduler.pick over the queue index)

and, once per batch rather than per request, the position announcements a chat frontend hears
(`announce`: a walk over the queue in memory, so it grows with the queue; reported apart), and
how long a restart with the largest queue takes to rebuild the queue from the store.

and prints the median and 99th percentile in milliseconds, then the ratio of the largest level to
the smallest (all numbers from this one run). The queue's design promises a ratio of at most 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from bot.config import config_from_dict  # noqa: E402
from bot.core.jobs import Origin  # noqa: E402
from bot.core.service import Service  # noqa: E402
from bot.stack import Stack, open_stack  # noqa: E402
from tests.helpers.executor import FakeExecutor, fake_model_store  # noqa: E402

OPERATIONS = ("submit", "status", "cancel", "pick")
PROMPTS = ["a red circle on a blue background", "a green square --ar 3:2", "a white triangle --steps 12 --n 2",
           "a yellow heart on black --seed 7", "a purple circle --no blurry --cfg 3"]


async def open_service(folder: Path) -> Stack:
    config = config_from_dict({
        "storage": {"state_dir": str(folder / "state"), "models_dir": str(fake_model_store(folder / "models"))},
        "limits": {"min_side": 32},
        "models": {"rescan_seconds": 3600.0},
        "queue": {"max_queued_per_user": 50, "max_jobs_per_hour": 0, "batch_window": 0.0},
    })
    executor = FakeExecutor(seconds_per_image_step=0.05)
    executor.gate.clear()  # the worker is paused on its first batch: the queue only grows
    return await open_stack(config, executor)


class Load:
    def __init__(self, service: Service, users: int, rng: random.Random) -> None:
        self.service = service
        self.users = users
        self.rng = rng
        self.sent = 0

    def origin(self) -> Origin:
        self.sent += 1
        return Origin("web", f"user{self.sent % self.users}", chat_id="web")

    async def submit(self) -> int:
        return (await self.service.submit(self.rng.choice(PROMPTS), self.origin())).job_id

    async def fill_to(self, level: int) -> None:
        while len(self.service.waiting) < level:
            await self.submit()

    def random_waiting(self) -> int:
        """A random waiting job (the fair order's first few hundred are as good as any for timing)."""
        index = self.service.waiting
        position = self.rng.randrange(len(index))
        for n, job in enumerate(index.in_order()):  # not timed
            if n == position:
                return job.id
        raise AssertionError("unreachable")


async def measure(load: Load, samples: int) -> dict[str, list[float]]:
    service = load.service
    times: dict[str, list[float]] = {name: [] for name in OPERATIONS}
    admin = Origin("web", "bench-admin", is_admin=True)
    scheduler = service.worker.scheduler
    for _ in range(samples):
        started = time.perf_counter()
        await load.submit()
        times["submit"].append(time.perf_counter() - started)

        job_id = load.random_waiting()
        started = time.perf_counter()
        await service.status(job_id)
        times["status"].append(time.perf_counter() - started)

        job_id = load.random_waiting()
        started = time.perf_counter()
        await service.cancel(job_id, admin)
        times["cancel"].append(time.perf_counter() - started)

        started = time.perf_counter()
        scheduler.pick(service.waiting, "demo", time.time())
        times["pick"].append(time.perf_counter() - started)
    return times


async def measure_announcements(service: Service, samples: int) -> list[float]:
    """After-batch position announcements with a chat frontend following every job."""
    following = service.subscribe(platform="web")
    times = []
    try:
        for _ in range(samples):
            started = time.perf_counter()
            await service.worker.announce_positions()
            times.append(time.perf_counter() - started)
            while not following.queue.empty():
                following.queue.get_nowait()
    finally:
        following.close()
    return times


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", default="10,1000,10000", help="jobs waiting at each measurement")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = sorted(int(level) for level in args.levels.split(","))

    with tempfile.TemporaryDirectory(prefix="imagebot-bench-") as folder:
        stack = await open_service(Path(folder))
        service = stack.service
        load = Load(service, args.users, random.Random(args.seed))
        results: dict[int, dict[str, list[float]]] = {}
        announcing: dict[int, list[float]] = {}
        try:
            for level in levels:
                fill_started = time.perf_counter()
                await load.fill_to(level)
                print(f"# {len(service.waiting)} waiting from {min(level, args.users)} users "
                      f"(filled in {time.perf_counter() - fill_started:.1f} s)", file=sys.stderr, flush=True)
                results[level] = await measure(load, args.samples)
                announcing[level] = await measure_announcements(service, 20)
        finally:
            stack.executor.gate.set()
            await stack.close()
        # A restart rebuilds the in-memory queue from the store: one read of the waiting rows.
        started = time.perf_counter()
        stack = await open_service(Path(folder))
        restart_seconds = time.perf_counter() - started
        restored = len(stack.service.waiting)
        stack.executor.gate.set()
        await stack.close()

    print(f"Queue operations, milliseconds (median / p99 of {args.samples} each), one run:\n")
    print("| waiting | " + " | ".join(OPERATIONS) + " |")
    print("|---:|" + "---:|" * len(OPERATIONS))
    for level in levels:
        cells = [f"{statistics.median(results[level][op]) * 1e3:.2f} / {p99(results[level][op]) * 1e3:.2f}"
                 for op in OPERATIONS]
        print(f"| {level:,} | " + " | ".join(cells) + " |")
    low, high = levels[0], levels[-1]
    ratios = {op: statistics.median(results[high][op]) / statistics.median(results[low][op]) for op in OPERATIONS}
    print(f"| ratio {high:,}/{low:,} (medians) | " + " | ".join(f"{ratios[op]:.2f}" for op in OPERATIONS) + " |")
    print(f"| ratio {high:,}/{low:,} (p99) | " + " | ".join(
        f"{p99(results[high][op]) / p99(results[low][op]):.2f}" for op in OPERATIONS) + " |")
    print("\nPosition announcements after a batch (once per batch, not per request), ms median: " + ", ".join(
        f"{statistics.median(announcing[level]) * 1e3:.2f} at {level:,}" for level in levels))
    print(f"Restart with {restored:,} jobs waiting: {restart_seconds:.2f} s to open the stack again")
    worst = max(ratios.values())
    print(f"\nlargest ratio of medians {worst:.2f} ({'within' if worst <= 3 else 'OVER'} the promised 3)")


if __name__ == "__main__":
    asyncio.run(main())
