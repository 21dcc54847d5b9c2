"""The jobs table: adding a job, the queue's reads, claiming, outcomes, recovery, delivery.

A mixin of `Store` (bot/core/store.py) on the shared connection (bot/core/store_connection.py).
`add_job` counts the job in the usage table (`add_usage`, bot/core/store_records.py) in the same
transaction: a job is in the queue and in its owner's quota, or in neither.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Sequence

from bot.core.jobs import (
    CANCELLED,
    DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    QUEUED,
    RUNNING,
    ImageResult,
    Job,
    Origin,
    QueuedJob,
    new_public_id,
)
from bot.core.request import GenerationRequest
from bot.core.store_connection import StoreConnection, serialized

_JOB_COLUMNS = ("id, status, request, origin, attempts, created_at, started_at, finished_at, results, error, "
                "error_key, error_params, delivery, cancel_requested, public_id")

_QUEUED_COLUMNS = "id, user_key, model, batch_key, images, steps, created_at, is_admin, public_id"


@dataclass(frozen=True)
class Recovery:
    requeued: tuple[int, ...]
    failed: tuple[int, ...]


class JobRows(StoreConnection):
    # Declared, not defined: the usage table's method (RecordRows), which `Store` joins in.
    add_usage: Callable[..., Awaitable[None]]

    @serialized
    async def add_job(self, request: GenerationRequest, origin: Origin) -> QueuedJob:
        """Insert a queued job and count it in the user's usage, both or neither."""
        now = time.time()
        batch_key = batch_key_text(request)
        public_id = new_public_id()
        async with self.transaction():
            async with self.db.execute(
                "INSERT INTO jobs (status, request, origin, platform, user_key, model, images, created_at, steps, "
                "batch_key, is_admin, public_id, address) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (QUEUED, json.dumps(request.to_dict(), ensure_ascii=False), origin.to_json(), origin.platform,
                 origin.user_key, request.model, request.count, now, request.steps, batch_key, origin.is_admin,
                 public_id, origin.address),
            ) as cursor:
                job_id = cursor.lastrowid
            await self.add_usage(origin.user_key, request.count, now)
            if origin.address_key:
                await self.add_usage(origin.address_key, request.count, now)
        return QueuedJob(job_id, origin.user_key, request.model, batch_key, request.count, request.steps, now,
                         origin.is_admin, public_id)

    @serialized
    async def get(self, job_id: int) -> Job | None:
        async with self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    @serialized
    async def id_of(self, public_id: str) -> int | None:
        """The internal id of the job with this public id."""
        async with self.db.execute("SELECT id FROM jobs WHERE public_id = ?", (public_id,)) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    @serialized
    async def queued(self) -> list[QueuedJob]:
        """Every waiting job, oldest first: read once at start to rebuild the in-memory queue."""
        async with self.db.execute(
            f"SELECT {_QUEUED_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY id"
        ) as cursor:
            return [_queued(row) for row in await cursor.fetchall()]

    @serialized
    async def queued_entry(self, job_id: int) -> QueuedJob | None:
        """One job as the queue index holds it, if it is waiting."""
        async with self.db.execute(
            f"SELECT {_QUEUED_COLUMNS} FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _queued(row) if row else None

    @serialized
    async def running(self) -> list[Job]:
        return await self._select("status = 'running'")

    @serialized
    async def claim(self, job_ids: Sequence[int]) -> list[Job]:
        """Mark the chosen queued jobs running, in one statement; returns those it got."""
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        async with self.db.execute(
            f"UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = ? "
            f"WHERE id IN ({marks}) AND status = 'queued' RETURNING id",
            (time.time(), *job_ids),
        ) as cursor:
            claimed = {row[0] for row in await cursor.fetchall()}
        jobs = [await self.get(job_id) for job_id in job_ids if job_id in claimed]
        return [job for job in jobs if job is not None]

    @serialized
    async def finish(self, job_id: int, images: Iterable[ImageResult], grid: str | None) -> bool:
        results = json.dumps({"images": [{"file": i.file, "seed": i.seed} for i in images], "grid": grid})
        return await self._update_running(job_id, "status = 'done', results = ?, finished_at = ?",
                                          (results, time.time()))

    @serialized
    async def fail(self, job_id: int, error: str, key: str | None = None, params: dict | None = None) -> bool:
        return await self._update_running(
            job_id, "status = 'failed', error = ?, error_key = ?, error_params = ?, finished_at = ?",
            (error, key, json.dumps(params or {}, ensure_ascii=False, default=str), time.time()))

    @serialized
    async def requeue(self, job_id: int) -> bool:
        """Give a running job back to the queue (shutdown, a lost worker)."""
        return await self._update_running(job_id, "status = 'queued', started_at = NULL", ())

    @serialized
    async def refund_attempt(self, job_id: int) -> bool:
        """Take back the attempt a claim counted, for a running job that never reached a worker."""
        return await self._update_running(job_id, "attempts = max(attempts - 1, 0)", ())

    @serialized
    async def cancel(self, job_id: int) -> str | None:
        """Cancel a queued job now, or ask a running one to stop; returns the new status."""
        async with self.db.execute(
            "UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ? AND status = 'queued' RETURNING id",
            (time.time(), job_id),
        ) as cursor:
            if await cursor.fetchone():
                return CANCELLED
        async with self.db.execute(
            "UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running' RETURNING id", (job_id,)
        ) as cursor:
            if await cursor.fetchone():
                return RUNNING
        return None

    @serialized
    async def mark_cancelled(self, job_id: int) -> bool:
        return await self._update_running(job_id, "status = 'cancelled', finished_at = ?", (time.time(),))

    @serialized
    async def _update_running(self, job_id: int, assignments: str, params: tuple) -> bool:
        async with self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'running' RETURNING id", (*params, job_id)
        ) as cursor:
            return await cursor.fetchone() is not None

    @serialized
    async def recover(self, max_attempts: int) -> Recovery:
        """At start-up: jobs a crash left running go back to the queue, unless they keep crashing."""
        async with self.transaction():
            async with self.db.execute(
                "UPDATE jobs SET status = 'failed', finished_at = ?, error_key = 'worker_crashed', "
                "error = 'The worker stopped while making this (' || attempts || ' attempts); giving up.', "
                "error_params = json_object('attempts', attempts) "
                "WHERE status = 'running' AND attempts >= ? RETURNING id",
                (time.time(), max_attempts),
            ) as cursor:
                failed = tuple(row[0] for row in await cursor.fetchall())
            async with self.db.execute(
                "UPDATE jobs SET status = 'queued', started_at = NULL WHERE status = 'running' RETURNING id"
            ) as cursor:
                requeued = tuple(row[0] for row in await cursor.fetchall())
        return Recovery(tuple(sorted(requeued)), tuple(sorted(failed)))

    @serialized
    async def undelivered(self, platform: str | None = None) -> list[Job]:
        where = "status IN ('done', 'failed', 'cancelled') AND delivery = 'pending'"
        if platform is None:
            return await self._select(where)
        return await self._select(where + " AND platform = ?", (platform,))

    @serialized
    async def set_delivery(self, job_id: int, delivery: str) -> None:
        assert delivery in (DELIVERY_PENDING, DELIVERED, DELIVERY_FAILED)
        await self.db.execute("UPDATE jobs SET delivery = ? WHERE id = ?", (delivery, job_id))

    @serialized
    async def history(self, user_key: str, limit: int = 20) -> list[Job]:
        return await self._select("user_key = ? ORDER BY id DESC LIMIT ?", (user_key, limit), order=False)

    @serialized
    async def finished_since(self, user_key: str, since: float, limit: int = 100) -> list[Job]:
        """The user's jobs that finished at or after `since` (a time.time()), oldest first."""
        return await self._select("user_key = ? AND status IN ('done', 'failed', 'cancelled') AND finished_at >= ? "
                                  "ORDER BY finished_at LIMIT ?", (user_key, since, limit), order=False)

    @serialized
    async def jobs_of(self, user_key: str, statuses: Sequence[str]) -> list[Job]:
        marks = ",".join("?" * len(statuses))
        return await self._select(f"user_key = ? AND status IN ({marks})", (user_key, *statuses))

    @serialized
    async def count_unfinished(self, user_key: str) -> int:
        """The user's jobs waiting or running."""
        async with self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE user_key = ? AND status IN ('queued', 'running')", (user_key,)
        ) as cursor:
            return (await cursor.fetchone())[0]

    @serialized
    async def count_unfinished_from(self, address: str) -> int:
        """Jobs waiting or running that came from one client address."""
        async with self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE address = ? AND address != '' AND status IN ('queued', 'running')",
            (address,)
        ) as cursor:
            return (await cursor.fetchone())[0]

    @serialized
    async def counts_by_status(self) -> dict[str, int]:
        async with self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status") as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    @serialized
    async def web_users_from(self, address: str) -> list[str]:
        """The web client keys (not accounts, not keyless callers) whose jobs came from `address`."""
        async with self.db.execute(
            "SELECT DISTINCT user_key FROM jobs WHERE address = ? AND platform = 'web' "
            "AND user_key NOT LIKE 'web:user:%' AND user_key NOT LIKE 'web:anon-%'", (address,)
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    @serialized
    async def _select(self, where: str, params: tuple = (), order: bool = True) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}" + (" ORDER BY id" if order else "")
        async with self.db.execute(sql, params) as cursor:
            return [_job(row) for row in await cursor.fetchall()]


def batch_key_text(request: GenerationRequest) -> str:
    """The request's batch key as stored in its row (requests with equal keys share a batch)."""
    return json.dumps(request.batch_key(), separators=(",", ":"))


def _queued(row: Any) -> QueuedJob:
    return QueuedJob(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])


def _job(row: Any) -> Job:
    results = json.loads(row["results"]) if row["results"] else {"images": [], "grid": None}
    return Job(
        id=row["id"],
        status=row["status"],
        request=GenerationRequest.from_dict(json.loads(row["request"])),
        origin=Origin.from_json(row["origin"]),
        attempts=row["attempts"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        images=tuple(ImageResult(i["file"], i["seed"]) for i in results["images"]),
        grid=results.get("grid"),
        error=row["error"],
        error_key=row["error_key"],
        error_params=json.loads(row["error_params"]) if row["error_params"] else {},
        delivery=row["delivery"],
        cancel_requested=bool(row["cancel_requested"]),
        public_id=row["public_id"],
    )
