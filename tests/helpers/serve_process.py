"""`imagebot serve` as a subprocess for the tests that need a real server process: started on a
config file, waited for until /healthz answers 200, stopped with SIGTERM (the graceful path) and
killed only if it does not exit in time."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def healthy(url: str, timeout: float = 2) -> bool:
    """Whether /healthz at `url` answers 200 within `timeout` seconds."""
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def serve_process(config: Path, cwd: Path, env: dict[str, str], url: str, log: Path, start_seconds: float = 120,
                  preexec_fn: Callable[[], None] | None = None) -> Iterator[subprocess.Popen]:
    """`imagebot --config CONFIG serve`, its output in `log`, running and healthy at `url` while
    the block runs; a start that fails or times out fails the test with the server's log."""
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "serve"], cwd=cwd,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec_fn)
    try:
        deadline = time.monotonic() + start_seconds
        while not healthy(url):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
