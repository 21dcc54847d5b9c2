"""`imagebot serve` at the open-file limit: with `ulimit -n 1024`, 1,100 connections that never
finish a request (half a request line, or nothing) do not stop /healthz answering, and the log says
so in a line or two, not a traceback per attempt. Under a high file limit the same flood, larger
than `[web] limit_concurrency`, does not bring on uvicorn's 503s either."""

from __future__ import annotations

import os
import resource
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.frontends.web.connections import FD_RESERVE
from tests.helpers.ports import free_port
from tests.helpers.serve_process import healthy, serve_process

REPO = Path(__file__).resolve().parents[1]
FILE_LIMIT = 1024
CONNECTIONS = 1100
ANSWER_SECONDS = 15  # how long /healthz may take while the flood is open: "a few seconds", with room for a busy machine


@dataclass(frozen=True)
class Limits:
    """The server's open-file limit and [web] limit_concurrency, and the flood sent at it."""

    files: int = FILE_LIMIT  # the server's `ulimit -n` (at most the hard limit)
    concurrency: int | None = None  # [web] limit_concurrency; None: the default (1,024)
    connections: int = CONNECTIONS  # half-open connections opened and held
    held: int = FILE_LIMIT // 2 + 1  # how many of them must be open at once for the test to mean something


AT_THE_FILE_LIMIT = Limits()
# The file limit far above the flood, so the cap below limit_concurrency is what holds: a small
# limit (quick), and the default one with 1,100 connections.
UNDER_A_HIGH_FILE_LIMIT = [Limits(files=8192, concurrency=256, connections=400, held=257),
                           Limits(files=8192, connections=CONNECTIONS, held=1025)]


def file_limit_for(limits: Limits) -> int:
    """`limits.files`, or the hard limit where that is lower but still far above the flood; skips
    the test where the hard limit is too low for the flood to stay clear of the file cap."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard == resource.RLIM_INFINITY or hard >= limits.files:
        return limits.files
    needed = limits.connections + FD_RESERVE + 256
    if limits.files > FILE_LIMIT and hard < needed:
        pytest.skip(f"the hard open-file limit ({hard}) is below the {needed} this flood needs to stay under it")
    return hard


@pytest.fixture
def server(tmp_path, request):
    limits: Limits = getattr(request, "param", AT_THE_FILE_LIMIT)
    files = file_limit_for(limits)

    def limit_files() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (files, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    port = free_port()
    (tmp_path / "models").mkdir()
    config = tmp_path / "config.toml"
    concurrency = "" if limits.concurrency is None else f"limit_concurrency = {limits.concurrency}\n"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path / 'state'}'\nmodels_dir = '{tmp_path / 'models'}'\n\n"
                      f"[engine]\ndevice = 'cpu'\n\n[web]\nport = {port}\n{concurrency}", encoding="utf-8")
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for name in ("IMAGEBOT_CONFIG", "DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    with serve_process(config, tmp_path, env, url, log, preexec_fn=limit_files):
        yield url, port, log, limits


def health(url: str, timeout: float) -> tuple[int | str, float]:
    """/healthz's status (or the error) and the seconds it took."""
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as response:
            answer: int | str = response.status
    except urllib.error.HTTPError as error:
        answer = error.code
    except OSError as error:
        answer = repr(error)
    return answer, time.monotonic() - start


@pytest.fixture
def many_files():
    """This process opens more than 1,024 sockets itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = CONNECTIONS + 256
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-file limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("server", [AT_THE_FILE_LIMIT, *UNDER_A_HIGH_FILE_LIMIT], indirect=True,
                         ids=lambda limits: f"ulimit-{limits.files}-limit_concurrency-{limits.concurrency or 1024}")
def test_healthz_answers_through_a_flood_of_half_open_connections_and_the_log_stays_short(server, many_files):
    url, port, log, limits = server
    held: list[socket.socket] = []
    try:
        for n in range(limits.connections):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                continue  # the server may shed connections as fast as they come; what matters is below
            if n % 2:
                try:
                    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0")  # half a request, never finished
                except OSError:
                    pass
            held.append(sock)
        assert len(held) >= limits.held
        for _ in range(3):  # not 503 (uvicorn's limit_concurrency) nor a timeout, while all of them are held
            answer, seconds = health(url, ANSWER_SECONDS)
            assert answer == 200, f"/healthz answered {answer} in {seconds:.2f} s with {len(held)} connections held"
            time.sleep(0.5)
    finally:
        for sock in held:
            sock.close()
    assert healthy(url, timeout=ANSWER_SECONDS)
    text = log.read_text(encoding="utf-8", errors="replace")
    lines = [line for line in text.splitlines() if "file descriptor" in line or "out of system resource" in line]
    assert len(lines) <= 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert len(text.splitlines()) < 40, text[-3000:]


def test_a_connection_that_never_finishes_its_request_is_closed(server):
    url, port, _, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.")
        assert sock.recv(1024) == b""  # closed by the server (after [web] timeout_header), not left open
