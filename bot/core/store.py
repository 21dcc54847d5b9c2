"""The job store: SQLite (aiosqlite), the single source of truth for every job.

Memory only wakes things up; whatever a user submitted is a row here before they hear "queued",
and stays until it is finished and delivered. WAL mode lets readers (status pages, metrics) run
while the worker writes; the busy timeout rides out short lock waits.

Schema changes are numbered migrations (bot/core/schema.py) applied in order and recorded in
`PRAGMA user_version`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import aiosqlite

from bot.core.jobs import (
    CANCELLED,
    QueuedJob,
    new_public_id,
    DELIVERED,
    DELIVERY_FAILED,
    DELIVERY_PENDING,
    QUEUED,
    RUNNING,
    ImageResult,
    Job,
    Origin,
)
from bot.core.errors import UserError
from bot.core.request import GenerationRequest
from bot.core.schema import MIGRATIONS

_JOB_COLUMNS = ("id, status, request, origin, attempts, created_at, started_at, finished_at, results, error, "
                "error_key, error_params, delivery, cancel_requested, public_id")

_QUEUED_COLUMNS = "id, user_key, model, batch_key, images, steps, created_at, is_admin, public_id"


@dataclass(frozen=True)
class Recovery:
    requeued: tuple[int, ...]
    failed: tuple[int, ...]


class _TaskLock:
    """An asyncio lock that the task holding it may take again (a transaction calls other methods).

    One connection serves every coroutine, and each statement is an await: without this, a COMMIT
    could land while another coroutine still reads a cursor ("SQL statements in progress"), and a
    write from elsewhere would join an open transaction and be rolled back with it.
    """

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self._owner: asyncio.Task | None = None
        self._depth = 0

    @contextlib.asynccontextmanager
    async def held(self):
        task = asyncio.current_task()
        if self._owner is not task:
            await self._lock.acquire()
            self._owner = task
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._lock.release()


def _exclusive(method):
    """Run a Store method alone on the connection (see _TaskLock)."""

    @functools.wraps(method)
    async def run(self, *args, **kwargs):
        async with self.exclusive():
            return await method(self, *args, **kwargs)

    return run


class Store:
    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.db = connection
        self._serial = _TaskLock()

    def exclusive(self):
        """Hold the connection for a sequence of statements (re-entrant within one task)."""
        return self._serial.held()

    @classmethod
    async def open(cls, path: str | Path) -> "Store":
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = await aiosqlite.connect(str(path), isolation_level=None)  # we manage transactions
        try:
            connection.row_factory = aiosqlite.Row
            await connection.execute("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA busy_timeout = 5000")
            await connection.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL survives process crashes
            await connection.execute("PRAGMA foreign_keys = ON")
            store = cls(connection)
            await store.migrate()
        except BaseException:
            await connection.close()  # or its thread keeps the process alive (a corrupt file, say)
            raise
        return store

    async def close(self) -> None:
        await self.db.close()

    @contextlib.asynccontextmanager
    async def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (the connection is in autocommit).
        The connection is held throughout, so nothing from another task joins the transaction."""
        async with self.exclusive():
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self.db.in_transaction:  # SQLite itself ends it on some errors (a full disk)
                    await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    @_exclusive
    async def probe_write(self) -> None:
        """Real writes that leave nothing behind, about the size of a job's row (so they need new
        space as an insert would): raises while the database cannot be written."""
        await self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('health_probe', ?)",
                              ("0" * 8192,))
        await self.db.execute("DELETE FROM settings WHERE key = 'health_probe'")

    @_exclusive
    async def migrate(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
        return len(MIGRATIONS)

    # --- jobs ----------------------------------------------------------------------------------

    @_exclusive
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

    @_exclusive
    async def get(self, job_id: int) -> Job | None:
        async with self.db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    @_exclusive
    async def id_of(self, public_id: str) -> int | None:
        """The internal id of the job with this public id."""
        async with self.db.execute("SELECT id FROM jobs WHERE public_id = ?", (public_id,)) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    @_exclusive
    async def queued(self) -> list[QueuedJob]:
        """Every waiting job, oldest first: read once at start to rebuild the in-memory queue."""
        async with self.db.execute(
            f"SELECT {_QUEUED_COLUMNS} FROM jobs WHERE status = 'queued' ORDER BY id"
        ) as cursor:
            return [_queued(row) for row in await cursor.fetchall()]

    @_exclusive
    async def queued_entry(self, job_id: int) -> QueuedJob | None:
        """One job as the queue index holds it, if it is waiting."""
        async with self.db.execute(
            f"SELECT {_QUEUED_COLUMNS} FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return _queued(row) if row else None

    @_exclusive
    async def running(self) -> list[Job]:
        return await self._select("status = 'running'")

    @_exclusive
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

    @_exclusive
    async def finish(self, job_id: int, images: Iterable[ImageResult], grid: str | None) -> bool:
        results = json.dumps({"images": [{"file": i.file, "seed": i.seed} for i in images], "grid": grid})
        return await self._update_running(job_id, "status = 'done', results = ?, finished_at = ?",
                                          (results, time.time()))

    @_exclusive
    async def fail(self, job_id: int, error: str, key: str | None = None, params: dict | None = None) -> bool:
        return await self._update_running(
            job_id, "status = 'failed', error = ?, error_key = ?, error_params = ?, finished_at = ?",
            (error, key, json.dumps(params or {}, ensure_ascii=False, default=str), time.time()))

    @_exclusive
    async def requeue(self, job_id: int) -> bool:
        """Give a running job back to the queue (shutdown, a lost worker)."""
        return await self._update_running(job_id, "status = 'queued', started_at = NULL", ())

    @_exclusive
    async def refund_attempt(self, job_id: int) -> bool:
        """Take back the attempt a claim counted, for a running job that never reached a worker."""
        return await self._update_running(job_id, "attempts = max(attempts - 1, 0)", ())

    @_exclusive
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

    @_exclusive
    async def mark_cancelled(self, job_id: int) -> bool:
        return await self._update_running(job_id, "status = 'cancelled', finished_at = ?", (time.time(),))

    @_exclusive
    async def _update_running(self, job_id: int, assignments: str, params: tuple) -> bool:
        async with self.db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status = 'running' RETURNING id", (*params, job_id)
        ) as cursor:
            return await cursor.fetchone() is not None

    @_exclusive
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

    @_exclusive
    async def undelivered(self, platform: str | None = None) -> list[Job]:
        where = "status IN ('done', 'failed', 'cancelled') AND delivery = 'pending'"
        if platform is None:
            return await self._select(where)
        return await self._select(where + " AND platform = ?", (platform,))

    @_exclusive
    async def set_delivery(self, job_id: int, delivery: str) -> None:
        assert delivery in (DELIVERY_PENDING, DELIVERED, DELIVERY_FAILED)
        await self.db.execute("UPDATE jobs SET delivery = ? WHERE id = ?", (delivery, job_id))

    @_exclusive
    async def history(self, user_key: str, limit: int = 20) -> list[Job]:
        return await self._select("user_key = ? ORDER BY id DESC LIMIT ?", (user_key, limit), order=False)

    @_exclusive
    async def finished_since(self, user_key: str, since: float, limit: int = 100) -> list[Job]:
        """The user's jobs that finished at or after `since` (a time.time()), oldest first."""
        return await self._select("user_key = ? AND status IN ('done', 'failed', 'cancelled') AND finished_at >= ? "
                                  "ORDER BY finished_at LIMIT ?", (user_key, since, limit), order=False)

    @_exclusive
    async def jobs_of(self, user_key: str, statuses: Sequence[str]) -> list[Job]:
        marks = ",".join("?" * len(statuses))
        return await self._select(f"user_key = ? AND status IN ({marks})", (user_key, *statuses))

    @_exclusive
    async def count_unfinished(self, user_key: str) -> int:
        """The user's jobs waiting or running."""
        async with self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE user_key = ? AND status IN ('queued', 'running')", (user_key,)
        ) as cursor:
            return (await cursor.fetchone())[0]

    @_exclusive
    async def count_unfinished_from(self, address: str) -> int:
        """Jobs waiting or running that came from one client address."""
        async with self.db.execute(
            "SELECT COUNT(*) FROM jobs WHERE address = ? AND address != '' AND status IN ('queued', 'running')",
            (address,)
        ) as cursor:
            return (await cursor.fetchone())[0]

    @_exclusive
    async def counts_by_status(self) -> dict[str, int]:
        async with self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status") as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    @_exclusive
    async def _select(self, where: str, params: tuple = (), order: bool = True) -> list[Job]:
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}" + (" ORDER BY id" if order else "")
        async with self.db.execute(sql, params) as cursor:
            return [_job(row) for row in await cursor.fetchall()]

    # --- usage, bans, settings, audit -------------------------------------------------------------

    @_exclusive
    async def add_usage(self, user_key: str, images: int, now: float | None = None) -> None:
        hour = int((now or time.time()) // 3600)
        await self.db.execute(
            "INSERT INTO usage (user_key, hour, jobs, images) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (user_key, hour) DO UPDATE SET jobs = jobs + 1, images = images + excluded.images",
            (user_key, hour, images))

    @_exclusive
    async def usage_last_hour(self, user_key: str, now: float | None = None) -> int:
        """Jobs submitted in the current and the previous clock hour (a sliding-enough window)."""
        hour = int((now or time.time()) // 3600)
        async with self.db.execute(
            "SELECT COALESCE(SUM(jobs), 0) FROM usage WHERE user_key = ? AND hour >= ?", (user_key, hour - 1)
        ) as cursor:
            return (await cursor.fetchone())[0]

    @_exclusive
    async def ban(self, user_key: str, reason: str, by: str) -> None:
        await self.db.execute(
            "INSERT OR REPLACE INTO bans (user_key, reason, banned_by, created_at) VALUES (?, ?, ?, ?)",
            (user_key, reason, by, time.time()))

    @_exclusive
    async def unban(self, user_key: str) -> None:
        await self.db.execute("DELETE FROM bans WHERE user_key = ?", (user_key,))

    @_exclusive
    async def bans(self) -> dict[str, str]:
        """Every banned key and its reason."""
        async with self.db.execute("SELECT user_key, reason FROM bans") as cursor:
            return {key: reason for key, reason in await cursor.fetchall()}

    @_exclusive
    async def bans_by(self, banned_by: str) -> list[str]:
        async with self.db.execute("SELECT user_key FROM bans WHERE banned_by = ?", (banned_by,)) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    @_exclusive
    async def web_users_from(self, address: str) -> list[str]:
        """The web client keys (not accounts, not keyless callers) whose jobs came from `address`."""
        async with self.db.execute(
            "SELECT DISTINCT user_key FROM jobs WHERE address = ? AND platform = 'web' "
            "AND user_key NOT LIKE 'web:user:%' AND user_key NOT LIKE 'web:anon-%'", (address,)
        ) as cursor:
            return [row[0] for row in await cursor.fetchall()]

    @_exclusive
    async def get_setting(self, key: str) -> str | None:
        async with self.db.execute("SELECT value FROM settings WHERE key = ?", (key,)) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    @_exclusive
    async def set_setting(self, key: str, value: str | None) -> None:
        if value is None:
            await self.db.execute("DELETE FROM settings WHERE key = ?", (key,))
        else:
            await self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    @_exclusive
    async def chat_settings(self, platform: str, chat_id: str) -> dict[str, str]:
        async with self.db.execute(
            "SELECT key, value FROM chat_settings WHERE platform = ? AND chat_id = ?", (platform, chat_id)
        ) as cursor:
            return {row[0]: row[1] for row in await cursor.fetchall()}

    @_exclusive
    async def set_chat_setting(self, platform: str, chat_id: str, key: str, value: str | None) -> None:
        if value is None:
            await self.db.execute("DELETE FROM chat_settings WHERE platform = ? AND chat_id = ? AND key = ?",
                                  (platform, chat_id, key))
        else:
            await self.db.execute("INSERT OR REPLACE INTO chat_settings VALUES (?, ?, ?, ?)",
                                  (platform, chat_id, key, value))

    @_exclusive
    async def audit(self, actor: str, action: str, detail: dict[str, Any]) -> None:
        await self.db.execute("INSERT INTO audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                              (time.time(), actor, action, json.dumps(detail, ensure_ascii=False)))

    @_exclusive
    async def audit_log(self, limit: int = 50) -> list[dict[str, Any]]:
        async with self.db.execute(
            "SELECT at, actor, action, detail FROM audit ORDER BY id DESC LIMIT ?", (limit,)
        ) as cursor:
            return [{"at": r[0], "actor": r[1], "action": r[2], "detail": json.loads(r[3])}
                    for r in await cursor.fetchall()]


def batch_key_text(request: GenerationRequest) -> str:
    """The request's batch key as stored in its row (requests with equal keys share a batch)."""
    return json.dumps(request.batch_key(), separators=(",", ":"))


def storage_problem(error: BaseException) -> str | None:
    """For a database error: "storage_full" (the disk or the database's size limit) or
    "storage_unavailable" (anything else SQLite refused); None for other errors."""
    if not isinstance(error, sqlite3.Error):
        return None
    if getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "disk is full" in str(error):
        return "storage_full"
    return "storage_unavailable"


@contextlib.contextmanager
def storage_errors():
    """Turn a database write that failed into a UserError a person can read ("storage_full",
    "storage_unavailable"); other errors pass through."""
    try:
        yield
    except Exception as error:
        problem = storage_problem(error)
        if problem is None:
            raise
        raise UserError(problem) from error


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
