"""Door benchmark: what the checks on every HTTP request cost as bans, uploads and users grow.

    python bench/doors.py [--levels 10,10000] [--samples 300]

The real app (FastAPI over the real service, store on disk, worker paused on a stand-in executor)
through httpx's in-process transport. At each level it first stores that many bans (users and
addresses) and keeps that many uploads waiting from as many clients and addresses (capped at the
pool's 500), then times, `--samples` times each:

  status   GET /api/jobs/{id} of a waiting job (the ban check on every route, then the job)
  history  GET /api/history (the caller, their ban check, their jobs)
  upload   POST /api/uploads of a 64 px PNG (ban check, decode, share check, write), then its removal

and prints the median and 99th percentile in milliseconds, then the ratio of the largest level to
the smallest (all numbers from this one run). Bans are read from memory and shares are counters,
so the ratio should stay near 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import io
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import httpx  # noqa: E402
from PIL import Image  # noqa: E402

from bot.config import Secrets, config_from_dict  # noqa: E402
from bot.core.jobs import Origin  # noqa: E402
from bot.frontends.web.api import create_app  # noqa: E402
from bot.stack import open_stack  # noqa: E402
from tests.helpers.executor import FakeExecutor, fake_model_store  # noqa: E402

OPERATIONS = ("status", "history", "upload")
ADMIN = Origin("web", "bench-admin-0123456789", is_admin=True, address="127.0.0.1")
KEY = {"X-Imagebot-User": "bench-user-0123456789"}


def png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(out, format="PNG")
    return out.getvalue()


async def measure(level: int, samples: int, folder: Path) -> dict[str, list[float]]:
    config = config_from_dict({
        "storage": {"state_dir": str(folder / "state"), "models_dir": str(fake_model_store(folder / "models"))},
        "limits": {"min_side": 32, "max_uploads": 1000},
        "models": {"rescan_seconds": 3600.0},
        "queue": {"max_queued_per_user": 0, "max_jobs_per_hour": 0, "batch_window": 0.0},
    })
    executor = FakeExecutor()
    executor.gate.clear()
    stack = await open_stack(config, executor)
    service = stack.service
    try:
        for n in range(level):
            await service.bans.ban(f"web:banned-{n:08d}-abcdefgh" if n % 2 else f"address:10.{n // 65536 % 256}."
                                   f"{n // 256 % 256}.{n % 256}", "bench", ADMIN)
        picture = png()
        for n in range(min(level, 500)):
            owner = Origin("web", f"uploader-{n:08d}-abcd", address=f"192.0.2.{n % 250}")
            await service.upload(picture, owner)
        app = create_app(service, config, Secrets())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
            first = (await client.post("/api/jobs", json={"prompt": "a red circle"}, headers=KEY)).json()
            job = (await client.post("/api/jobs", json={"prompt": "a blue square"}, headers=KEY)).json()
            assert "id" in job, job
            times: dict[str, list[float]] = {name: [] for name in OPERATIONS}
            for _ in range(samples):
                start = time.perf_counter()
                assert (await client.get(f"/api/jobs/{job['id']}")).status_code == 200
                times["status"].append(time.perf_counter() - start)
                start = time.perf_counter()
                assert (await client.get("/api/history", headers=KEY)).status_code == 200
                times["history"].append(time.perf_counter() - start)
                start = time.perf_counter()
                response = await client.post("/api/uploads", content=picture,
                                             headers={**KEY, "Content-Type": "image/png"})
                times["upload"].append(time.perf_counter() - start)
                assert response.status_code == 201, response.text
                service.uploads.remove(service.uploads.find(response.json()["handle"]))
            del first
        return times
    finally:
        executor.gate.set()
        await stack.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="10,10000")
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    results: dict[int, dict[str, list[float]]] = {}
    for level in levels:
        with tempfile.TemporaryDirectory() as folder:
            results[level] = asyncio.run(measure(level, args.samples, Path(folder)))

    def median(level: int, name: str) -> float:
        return statistics.median(results[level][name]) * 1000

    def p99(level: int, name: str) -> float:
        values = sorted(results[level][name])
        return values[int(len(values) * 0.99) - 1] * 1000

    print("Milliseconds, median / 99th percentile:\n")
    print("| bans (uploads waiting) | " + " | ".join(OPERATIONS) + " |")
    print("|---:|" + "---:|" * len(OPERATIONS))
    for level in levels:
        cells = " | ".join(f"{median(level, name):.2f} / {p99(level, name):.2f}" for name in OPERATIONS)
        print(f"| {level:,} ({min(level, 500)}) | {cells} |")
    low, high = levels[0], levels[-1]
    print(f"| ratio {high:,}/{low:,} (medians) | "
          + " | ".join(f"{median(high, name) / median(low, name):.2f}" for name in OPERATIONS) + " |")


if __name__ == "__main__":
    main()
