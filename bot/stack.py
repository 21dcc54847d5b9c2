"""One function wires the service stack: job store, model registry, executor and `Service`.

`imagebot serve`, the tests and `bench/` all build the stack here, so they run what users run.
The store's folders and database file are checked with plain sqlite3 before anything slow starts
(torch, a model load), so a broken state folder stops `serve` at once with one line that says
what is wrong and where.
"""

from __future__ import annotations

import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bot import __version__
from bot.config import Config, StorageConfig
from bot.core.executor import Executor
from bot.core.service import Catalog, Service
from bot.core.store import Store
from bot.executors.local import LocalExecutor
from bot.models.registry import Registry


class StartupError(Exception):
    """The service cannot start; the message names what is wrong and where, in one line."""


@dataclass
class Stack:
    config: Config
    store: Store
    registry: Catalog
    executor: Executor
    service: Service

    async def close(self) -> None:
        """Stop the service (the running batch gets `[queue] shutdown_grace`, then it is requeued)
        and close the store."""
        try:
            await self.service.stop()
        finally:
            await self.store.close()


async def open_stack(config: Config, executor: Executor | None = None) -> Stack:
    """Check the state folder, open the store, scan the models and start the service.

    Without `executor`, the local GPU worker runs batches (this imports torch and loads the engine);
    a test or benchmark may pass its own, and then torch is never imported here."""
    check_storage(config.storage)
    registry = Registry(Path(config.storage.models_dir), config.variants, config.models.rescan_seconds)
    if executor is None:
        executor = make_executor(config, registry)
    store = await _open_store(config.storage.database_path())
    service = Service(config, store, executor, registry)
    if config.describe.model:
        from bot.engine.describe import Describer  # torch: only where /describe is set up

        service.pictures.describer = Describer(config.describe.model, config.describe.device,
                                               config.describe.candidates).describe
    try:
        await service.start()
    except BaseException:
        # A model that fails to load, or Ctrl+C during the load: leave no thread or connection open.
        await executor.close()
        await store.close()
        raise
    return Stack(config, store, registry, executor, service)


def make_executor(config: Config, registry: Registry) -> Executor:
    """The executor `[executor] kind` names: this machine's devices, or Ray Serve replicas."""
    version = f"imagebot {__version__}"
    if config.executor.kind == "ray":
        try:
            import ray.serve  # noqa: F401  (the [ray] extra)
        except ImportError:
            raise StartupError('[executor] kind = "ray" needs Ray Serve: pip install -e ".[ray]"') from None
        from bot.executors.ray_serve import RayExecutor

        return RayExecutor(config, registry, version=version)
    return LocalExecutor(registry, config.engine, config.storage.outputs_path(),
                         allow_download=config.models.allow_download, version=version)


async def _open_store(path: Path) -> Store:
    try:
        return await Store.open(path)
    except (sqlite3.Error, OSError) as error:  # what check_storage cannot foresee, e.g. a full disk
        raise StartupError(f"cannot open the database {path}: {error}") from error


# --- checks before anything slow starts ---------------------------------------------------------


def check_storage(storage: StorageConfig) -> None:
    """Create the state, database and outputs folders and make sure the database can be read and
    written. Raises StartupError naming the path."""
    database = storage.database_path()
    outputs = storage.outputs_path()
    for label, folder in (("state folder", Path(storage.state_dir)), ("database folder", database.parent),
                          ("outputs folder", outputs)):
        _make_folder(label, folder)
    _check_writable("outputs folder", outputs)
    check_database(database)


def _make_folder(label: str, folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where a folder should be, at the path or above it
        raise StartupError(f"cannot create the {label} {folder}: a file is in the way") from None
    except OSError as error:
        raise StartupError(f"cannot create the {label} {folder}: {_reason(error)}") from None


def _check_writable(label: str, folder: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise StartupError(f"the {label} {folder} is not writable: {_reason(error)}") from None


def check_database(path: Path) -> None:
    """Read the header and schema, then write and roll back, as the store will.

    aiosqlite (under the store) runs each connection on a thread that a failed open leaves behind,
    so the store must only ever open a file that this check has passed."""
    if path.is_dir():
        raise StartupError(f"the database {path} is a folder; [storage] database must name a file")
    try:
        connection = sqlite3.connect(path, timeout=5.0, isolation_level=None)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # "file is not a database"
            # A write, rolled back: a read-only file or folder, or a disk that refuses writes, only
            # shows when a page is written (the lock alone is granted on a read-only file).
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("CREATE TABLE imagebot_write_check (x)")
            connection.execute("ROLLBACK")
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise StartupError(f"cannot use the database {path}: {error}{_database_hint(error)}") from None


def _database_hint(error: sqlite3.Error) -> str:
    text = str(error)
    if "not a database" in text or "malformed" in text:
        return " (move the file away to start with an empty queue, or restore a backup)"
    if "readonly" in text or "unable to open" in text:
        return " (the file and its folder must be writable by this user)"
    if "locked" in text:
        return " (is another imagebot running on the same state folder?)"
    return ""


def _reason(error: OSError) -> str:
    return (error.strerror or str(error)).lower() if error.errno else str(error)
