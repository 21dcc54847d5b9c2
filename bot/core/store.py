"""The job store: SQLite (aiosqlite), the single source of truth for every job.

Memory only wakes things up; whatever a user submitted is a row here before they hear "queued",
and stays until it is finished and delivered.

`Store` is the one object callers hold. It is put together from one class per table group, all on
one connection: `StoreConnection` (opening, migrations, transactions, the lock;
bot/core/store_connection.py), `JobRows` (the jobs table; bot/core/store_jobs.py) and `RecordRows`
(usage, bans, settings, audit; bot/core/store_records.py). Migrations are in bot/core/schema.py.
"""

from __future__ import annotations

import contextlib
import sqlite3

from bot.core.errors import UserError
from bot.core.store_jobs import JobRows, Recovery
from bot.core.store_records import RecordRows

__all__ = ["Recovery", "Store", "storage_errors", "storage_problem"]


class Store(JobRows, RecordRows):
    """Every table group on one connection (see the module's docstring)."""


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
