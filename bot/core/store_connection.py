"""The store's one SQLite connection: opening it, migrations, transactions and the lock that
serialises every coroutine's use of it.

WAL mode lets readers (status pages, metrics) run while the worker writes; the busy timeout rides
out short lock waits. Schema changes are numbered migrations (bot/core/schema.py) applied in order
and recorded in `PRAGMA user_version`. The table groups (bot/core/store_jobs.py,
bot/core/store_records.py) build on this class, and `Store` (bot/core/store.py) joins them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from pathlib import Path
from typing import Self

import aiosqlite

from bot.core.schema import MIGRATIONS


class TaskLock:
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


def serialized(method):
    """Run a Store method alone on the connection (see TaskLock)."""

    @functools.wraps(method)
    async def run(self, *args, **kwargs):
        async with self.exclusive():
            return await method(self, *args, **kwargs)

    return run


class StoreConnection:
    """One aiosqlite connection and the lock every query takes (`serialized`)."""

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self.db = connection
        self._serial = TaskLock()

    def exclusive(self):
        """Hold the connection for a sequence of statements (re-entrant within one task)."""
        return self._serial.held()

    @classmethod
    async def open(cls, path: str | Path) -> Self:
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

    @serialized
    async def probe_write(self) -> None:
        """Real writes that leave nothing behind, about the size of a job's row (so they need new
        space as an insert would): raises while the database cannot be written."""
        await self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('health_probe', ?)",
                              ("0" * 8192,))
        await self.db.execute("DELETE FROM settings WHERE key = 'health_probe'")

    @serialized
    async def migrate(self) -> int:
        async with self.db.execute("PRAGMA user_version") as cursor:
            (version,) = await cursor.fetchone()
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await self.db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
        return len(MIGRATIONS)
