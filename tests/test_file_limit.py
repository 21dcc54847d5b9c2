"""`imagebot serve` at the open-file limit: with `ulimit -n 1024`, 1,100 connections that never
finish a request (half a request line, or nothing) do not stop /healthz answering, and the log says
so in a line or two, not a traceback per attempt."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.ports import free_port

REPO = Path(__file__).resolve().parents[1]
FILE_LIMIT = 1024
CONNECTIONS = 1100
ANSWER_SECONDS = 15  # how long /healthz may take while the flood is open: "a few seconds", with room for a busy machine


def limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


@pytest.fixture
def server(tmp_path):
    port = free_port()
    (tmp_path / "models").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f"[storage]\nstate_dir = '{tmp_path / 'state'}'\nmodels_dir = '{tmp_path / 'models'}'\n\n"
                      f"[engine]\ndevice = 'cpu'\n\n[web]\nport = {port}\n", encoding="utf-8")
    log = tmp_path / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for name in ("IMAGEBOT_CONFIG", "DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN"):
        env.pop(name, None)
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "serve"], cwd=tmp_path,
                                   env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_files)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while not healthy(url):
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    try:
        yield url, port, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def healthy(url: str, timeout: float = 2) -> bool:
    try:
        with urllib.request.urlopen(url + "/healthz", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


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


def test_healthz_answers_through_a_flood_of_half_open_connections_and_the_log_stays_short(server, many_files):
    url, port, log = server
    held: list[socket.socket] = []
    try:
        for n in range(CONNECTIONS):
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
        assert len(held) > FILE_LIMIT // 2
        assert healthy(url, timeout=ANSWER_SECONDS)
        time.sleep(1)
        assert healthy(url, timeout=ANSWER_SECONDS)
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
    url, port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.")
        assert sock.recv(1024) == b""  # closed by the server (after [web] timeout_header), not left open
