"""`imagebot serve` fails fast: a broken state folder, database or taken port stops it at once with
one line on stderr naming what and where (no traceback, no process left running); and the pieces
that bound its shutdown (frontend stop, watchdog, busy threads) do what they say.

The failing starts run the real command in a subprocess; they stop before torch is imported, so
each takes about a second. `subprocess.run(timeout=...)` turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bot.stack import StartupError, check_database
from tests.helpers.ports import free_port

FAIL_TIMEOUT = 60.0  # far more than a failing start takes: only a hang reaches it
ROOT = Path(__file__).resolve().parent.parent


def write_config(folder: Path, port: int, **storage: str) -> Path:
    settings = {"state_dir": str(folder / "state"), "models_dir": str(folder / "models"), **storage}
    lines = ["[storage]", *(f"{key} = '{value}'" for key, value in settings.items()),
             "[engine]", "device = 'cpu'",
             "[web]", "host = '127.0.0.1'", f"port = {port}"]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def run_serve(config: Path, *flags: str, **secrets: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("IMAGEBOT_CONFIG", "IMAGEBOT_ADMIN_TOKEN", "TELEGRAM_TOKEN", "DISCORD_TOKEN")}
    env.update(secrets)
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "serve", *flags], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=FAIL_TIMEOUT)


def assert_one_line_failure(result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imagebot: "), lines[0]
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def _corrupt_database(tmp_path: Path) -> tuple[dict[str, str], Path, str]:
    database = tmp_path / "state" / "imagebot.sqlite3"
    database.parent.mkdir()
    database.write_bytes(os.urandom(8192))
    return {}, database, "file is not a database"


def _state_folder_under_a_file(tmp_path: Path) -> tuple[dict[str, str], Path, str]:
    (tmp_path / "taken").write_text("a file where a folder should be")
    state = tmp_path / "taken" / "state"
    return {"state_dir": str(state)}, state, "cannot create the state folder"


def _database_folder_under_a_file(tmp_path: Path) -> tuple[dict[str, str], Path, str]:
    (tmp_path / "taken").write_text("a file where a folder should be")
    folder = tmp_path / "taken" / "db"
    return {"database": str(folder / "imagebot.sqlite3")}, folder, "cannot create the database folder"


def _database_is_a_folder(tmp_path: Path) -> tuple[dict[str, str], Path, str]:
    database = tmp_path / "state" / "imagebot.sqlite3"
    database.mkdir(parents=True)
    return {}, database, "is a folder"


@pytest.mark.parametrize("broken", [_corrupt_database, _state_folder_under_a_file, _database_folder_under_a_file,
                                    _database_is_a_folder], ids=lambda f: f.__name__.strip("_"))
def test_a_broken_state_folder_or_database_stops_serve_at_once_with_one_line(tmp_path, broken):
    storage, path, problem = broken(tmp_path)
    result = run_serve(write_config(tmp_path, free_port(), **storage))
    assert_one_line_failure(result, str(path), problem)


def test_a_port_in_use_stops_serve_at_once_naming_the_address(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(write_config(tmp_path, port))
    line = assert_one_line_failure(result, f"127.0.0.1:{port}", "address already in use", "[web] port")
    assert "Traceback" not in result.stderr, line
    assert not (tmp_path / "state").exists()  # the port is checked before anything is written


def test_host_and_port_on_the_command_line_win_over_the_config(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve(write_config(tmp_path, 9), "--host", "127.0.0.1", "--port", str(port))
    assert_one_line_failure(result, f"127.0.0.1:{port}", "address already in use")


def test_a_short_admin_token_stops_serve_before_anything_starts(tmp_path):
    result = run_serve(write_config(tmp_path, 9), IMAGEBOT_ADMIN_TOKEN="secret")
    line = assert_one_line_failure(result, "IMAGEBOT_ADMIN_TOKEN is 6 characters long", "at least 16")
    assert "secret" not in line.replace("secrets", "")  # the token itself is never printed
    assert not (tmp_path / "state").exists()


def test_check_database_passes_a_good_database_and_leaves_it_as_it_was(tmp_path):
    database = tmp_path / "good.sqlite3"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY)")
    connection.close()
    check_database(database)
    check_database(tmp_path / "new.sqlite3")  # a database not made yet is fine: the store creates it
    with sqlite3.connect(database) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master")]
    connection.close()
    assert tables == ["jobs"]  # the write check was rolled back

    (tmp_path / "bad.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StartupError, match="bad.sqlite3: file is not a database"):
        check_database(tmp_path / "bad.sqlite3")


def run_python(code: str, timeout: float = FAIL_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_open_stack_with_a_fake_executor_never_imports_torch(tmp_path):
    result = run_python(f"""
        import asyncio, sys
        from bot.config import config_from_dict
        from bot.stack import open_stack

        class Idle:
            async def start(self): pass
            async def close(self): pass
            def loaded_model(self): return None
            def seconds_per_step(self, model): return None
            def metrics(self): return {{}}

        async def main():
            config = config_from_dict({{"storage": {{"state_dir": {str(tmp_path / "state")!r},
                                                     "models_dir": {str(tmp_path / "models")!r}}}}})
            stack = await open_stack(config, Idle())
            await stack.close()

        asyncio.run(main())
        print("torch" in sys.modules)
    """)
    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr
    assert (tmp_path / "state" / "imagebot.sqlite3").is_file()


class _Frontend:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.stopped = False

    async def stop(self) -> None:
        if self.behaviour == "hangs":
            await asyncio.Event().wait()
        if self.behaviour == "fails":
            raise RuntimeError("connection reset")
        self.stopped = True


async def test_a_frontend_that_hangs_or_fails_does_not_hold_up_the_others(caplog):
    from bot.serve import stop_frontends

    frontends = [_Frontend("hangs"), _Frontend("fails"), _Frontend("stops")]
    started = time.monotonic()
    await stop_frontends(frontends, seconds=0.3)
    assert time.monotonic() - started < 5
    assert frontends[2].stopped
    assert "_Frontend did not stop within" in caplog.text
    assert "_Frontend failed to stop cleanly" in caplog.text


def test_a_busy_non_daemon_thread_does_not_keep_the_process_alive():
    """As after serve() returned with a generation stuck inside a kernel."""
    result = run_python("""
        import threading, time
        from bot.serve import exit_past_busy_threads

        threading.Thread(target=time.sleep, args=(600,), name="gpu-worker_0").start()
        exit_past_busy_threads(0, wait=0.2)
        print("not reached")
    """)
    assert result.returncode == 0, result.stderr
    assert "not reached" not in result.stdout
    assert "gpu-worker_0" in result.stderr


def test_the_shutdown_watchdog_ends_a_process_that_hangs():
    result = run_python("""
        import logging, time
        from bot.serve import start_watchdog

        logging.basicConfig()
        start_watchdog(0.3)
        time.sleep(600)  # a shutdown step that never ends
    """)
    assert result.returncode == 1
    assert "shutdown took too long" in result.stderr
