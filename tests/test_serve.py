"""`imagebot serve` as a user runs it: a real process, real HTTP, real signals.

Crash recovery: SIGKILL in the middle of a batch, start again on the same state, and every job
finishes exactly once. A clean stop (SIGTERM) leaves nothing `running`, and one SIGTERM ends the
process within `shutdown_grace` plus a few seconds even with event streams open and a generation
that never returns. A job the worker keeps
dying on is given up after `queue.max_attempts` instead of looping. Tokens never reach the logs.

Each server start pays the torch/diffusers import (10-20 s here), so the tests start as few as
they can.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers.ports import free_port

START_TIMEOUT = 90.0
ADMIN_TOKEN = "adm1n-t0ken-that-must-never-be-logged"
TELEGRAM_TOKEN = "123456789:TELEGRAM-token-that-must-never-be-logged"
# The Telegram bot runs too, against a Bot API address where nothing listens (tests never reach
# Telegram): its token must stay out of the logs while it retries. The Discord bot has no such
# address to point at, so it stays off here; tests/frontends/discord drives it against a fake API.
SECRETS = {"IMAGEBOT_ADMIN_TOKEN": ADMIN_TOKEN, "TELEGRAM_TOKEN": TELEGRAM_TOKEN}
U1 = {"X-Imagebot-User": "test-user-one-0001"}
U2 = {"X-Imagebot-User": "test-user-two-0002"}


def write_config(folder: Path, models: Path, **queue: Any) -> tuple[Path, int]:
    port = free_port()
    queue_settings = {"job_timeout": 120, "shutdown_grace": 20, **queue}
    # engine.threads = 1: on a small shared machine two torch thread pools spinning against each other
    # (this server and whatever else runs) are many times slower than one thread each.
    lines = [
        "[storage]", f"state_dir = '{folder / 'state'}'", f"models_dir = '{models}'",
        "[limits]", "min_side = 32",
        "[engine]", "device = 'cpu'", "max_batch = 2", "threads = 1",
        "[queue]", *(f"{key} = {value}" for key, value in queue_settings.items()),
        "[web]", "host = '127.0.0.1'", f"port = {port}",
        "[telegram]", "base_url = 'http://127.0.0.1:9/bot'",
    ]
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, port


class Serve:
    """`python -m bot.cli --config CFG serve` runs, one process at a time, logs kept per run."""

    def __init__(self, folder: Path, config: Path, port: int, env: dict[str, str] | None = None,
                 verbose: bool = False, python: tuple[str, ...] = ("-m", "bot.cli")) -> None:
        self.folder = folder
        self.python = python  # what runs `imagebot`: the module, or code that wraps bot.cli.main
        self.config = config
        self.port = port
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("IMAGEBOT_CONFIG", "IMAGEBOT_ADMIN_TOKEN", "TELEGRAM_TOKEN", "DISCORD_TOKEN")}
        self.env["HF_HUB_OFFLINE"] = "1"
        self.env.update(SECRETS if env is None else env)
        self.verbose = verbose
        self.process: subprocess.Popen | None = None
        self.runs = 0
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0)

    @property
    def database(self) -> Path:
        return self.folder / "state" / "imagebot.sqlite3"

    @property
    def outputs(self) -> Path:
        return self.folder / "state" / "outputs"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.runs += 1
        out = open(self.folder / f"serve{self.runs}.out", "wb")
        err = open(self.folder / f"serve{self.runs}.err", "wb")
        command = [sys.executable, *self.python, "--config", str(self.config),
                   *(["-v"] if self.verbose else []), "serve"]
        self.process = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=out, stderr=err)
        out.close()
        err.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"serve exited with {self.process.returncode} while starting:\n{self.logs()[-3000:]}")
            try:
                if self.client.get("/healthz").json()["status"] == "ok":
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        pytest.fail(f"serve did not answer /healthz within {START_TIMEOUT:.0f} s:\n{self.logs()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine loses power or the OOM killer strikes."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop_quietly(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.client.close()

    def assert_clean_logs(self) -> None:
        logs = self.logs()
        assert "serving models" in logs  # the logs were written at all
        for token in SECRETS.values():
            assert token not in logs

    def logs(self) -> str:
        return "".join((self.folder / f"serve{run}.{kind}").read_text(errors="replace")
                       for run in range(1, self.runs + 1) for kind in ("out", "err"))

    def submit(self, prompt: str, headers: dict[str, str]) -> str:
        response = self.client.post("/api/jobs", json={"prompt": prompt}, headers=headers)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait_mid_run(self, job_ids: list[str], timeout: float = 120.0) -> str:
        """Poll until one of the jobs runs with at least one step done and steps left; its id."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for job_id in job_ids:
                job = self.job(job_id)
                progress = job["progress"]
                if job["status"] == "running" and progress and 1 <= progress["step"] < progress["total"] - 3:
                    return job_id
            time.sleep(0.05)
        pytest.fail(f"none of jobs {job_ids} was seen running mid-way")

    def wait_finished(self, job_ids: list[str], timeout: float = 240.0) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = {job_id: self.job(job_id) for job_id in job_ids}
            if all(job["status"] in ("done", "failed", "cancelled") for job in jobs.values()):
                return jobs
            time.sleep(0.2)
        pytest.fail(f"jobs did not finish: { {i: j['status'] for i, j in jobs.items()} }")

    def rows(self) -> dict[str, sqlite3.Row]:
        """The jobs table as the next start will find it (read straight from the file), by public id."""
        connection = sqlite3.connect(f"file:{self.database}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        try:
            return {row["public_id"]: row for row in connection.execute("SELECT * FROM jobs ORDER BY id")}
        finally:
            connection.close()


@pytest.fixture
def servers():
    started: list[Serve] = []
    yield started
    for server in started:
        server.stop_quietly()


def test_a_killed_server_finishes_every_job_exactly_once_after_a_restart(tmp_path, models_dir, servers):
    config, port = write_config(tmp_path, models_dir, max_attempts=3)
    server = Serve(tmp_path, config, port)
    servers.append(server)
    server.start()
    submitted = [
        (server.submit("a red fox --steps 20 --seed 1", U1), 1),
        (server.submit("a blue bird --steps 20 --seed 2", U2), 1),
        (server.submit("a green tree --steps 20 --seed 3 --n 2", U1), 2),
        (server.submit("a white boat --steps 20 --seed 4", U2), 1),
        (server.submit("a black cat --steps 20 --seed 5", U1), 1),
    ]
    ids = [job_id for job_id, _ in submitted]
    server.wait_mid_run(ids)
    server.kill()

    before = server.rows()
    assert len(before) == 5
    killed = {job_id for job_id, row in before.items() if row["status"] == "running"}
    finished_before = {job_id for job_id, row in before.items() if row["status"] == "done"}
    assert killed, {job_id: row["status"] for job_id, row in before.items()}
    assert all(before[job_id]["attempts"] == 1 for job_id in killed)
    assert {row["status"] for row in before.values()} <= {"running", "done", "queued"}

    server.start()
    jobs = server.wait_finished(ids)
    after = server.rows()
    assert sorted(after) == sorted(ids)  # no duplicate or extra rows
    counts = dict(submitted)
    for job_id in ids:
        row, job = after[job_id], jobs[job_id]
        assert (row["status"], job["status"]) == ("done", "done"), (job_id, job)
        assert row["attempts"] == (2 if job_id in killed else 1), (job_id, row["attempts"], killed)
        expected = [f"{job_id}-{i}.png" for i in range(counts[job_id])]
        assert [image["url"] for image in job["images"]] == [f"/api/images/{name}" for name in expected]
        assert sorted(p.name for p in server.outputs.glob(f"{job_id}-*.png") if "grid" not in p.name) == expected
        for name in expected:
            response = server.client.get(f"/api/images/{name}")
            assert response.status_code == 200 and response.content.startswith(b"\x89PNG")
        if job_id in finished_before:  # finished before the crash: never made again
            assert row["finished_at"] == before[job_id]["finished_at"]
    for headers, mine in ((U1, [ids[0], ids[2], ids[4]]), (U2, [ids[1], ids[3]])):
        history = server.client.get("/api/history", headers=headers).json()["jobs"]
        assert sorted(job["id"] for job in history) == sorted(mine)
        assert all(job["status"] == "done" and job["images"] for job in history)
    assert "recovered after restart" in server.logs()
    server.assert_clean_logs()


def test_sigterm_stops_cleanly_and_no_token_is_logged(tmp_path, models_dir, servers):
    config, port = write_config(tmp_path, models_dir, shutdown_grace=3)
    server = Serve(tmp_path, config, port, verbose=True)
    servers.append(server)
    server.start()
    admin = {"X-Imagebot-User": "test-admin-root-01", "Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert server.client.put("/api/models/default", json={"name": "demo"}, headers=admin).status_code == 200
    assert server.client.post("/api/models/reload", headers=admin).status_code == 200
    wrong = {"Authorization": f"Bearer {TELEGRAM_TOKEN}"}
    assert server.client.put("/api/models/default", json={"name": "demo"}, headers=wrong).status_code == 403
    assert server.client.post("/api/jobs", json={"prompt": f"x --model {TELEGRAM_TOKEN}"}, headers=U1).status_code == 400
    long_job = server.submit("a long one --steps 50 --n 2", U1)
    waiting = server.submit("a short one --steps 2", U2)
    server.wait_mid_run([long_job])

    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    code = server.process.wait(timeout=60)
    seconds = time.monotonic() - started
    assert code == 0, server.logs()[-3000:]
    assert seconds < 3 + 20, f"took {seconds:.1f} s to stop with a 3 s grace period"

    rows = server.rows()
    assert not [job_id for job_id, row in rows.items() if row["status"] == "running"], dict(rows)
    assert rows[long_job]["status"] in ("done", "queued")
    assert rows[waiting]["status"] in ("done", "queued")
    assert "Traceback" not in server.logs(), server.logs()[-3000:]
    assert "shutting down" in server.logs() and "stopped" in server.logs()
    server.assert_clean_logs()


def test_a_job_the_worker_keeps_dying_on_is_failed_not_retried_forever(tmp_path, models_dir, servers):
    config, port = write_config(tmp_path, models_dir, max_attempts=1)
    server = Serve(tmp_path, config, port)
    servers.append(server)
    server.start()
    crasher = server.submit("the poison pill --steps 50 --n 2", U1)
    server.wait_mid_run([crasher])
    bystander = server.submit("an innocent one --steps 2", U2)  # waiting while the worker dies
    server.kill()
    rows = server.rows()
    assert (rows[crasher]["status"], rows[crasher]["attempts"]) == ("running", 1)
    assert rows[bystander]["status"] == "queued"

    server.start()
    jobs = server.wait_finished([crasher, bystander])
    assert jobs[crasher]["status"] == "failed"
    assert "worker stopped" in jobs[crasher]["error"] and "giving up" in jobs[crasher]["error"]
    assert jobs[crasher]["images"] == []
    vietnamese = server.client.get(f"/api/jobs/{crasher}", headers={"Accept-Language": "vi"}).json()["error"]
    assert "Bộ tạo ảnh đã dừng" in vietnamese
    rows = server.rows()
    assert (rows[crasher]["status"], rows[crasher]["attempts"], rows[crasher]["error_key"]) == (
        "failed", 1, "worker_crashed")  # never started again
    assert not list(server.outputs.glob(f"{crasher}-*"))
    assert (jobs[bystander]["status"], rows[bystander]["attempts"]) == ("done", 1)
    assert f"failed=[{rows[crasher]['id']}]" in server.logs()  # the logs name internal ids
    server.assert_clean_logs()


# `imagebot` with every generation stuck, as in a kernel that never returns: no progress, no
# cancellation check, a worker thread that cannot be stopped.
HUNG_GENERATION = """
import sys, time
from bot.engine import engine
engine.Engine.generate = lambda self, *args, **kwargs: time.sleep(3600)
from bot.cli import main
sys.exit(main())
"""


def test_one_sigterm_ends_serve_despite_event_streams_and_a_hung_generation(tmp_path, models_dir, servers):
    grace = 2
    config, port = write_config(tmp_path, models_dir, shutdown_grace=grace)
    server = Serve(tmp_path, config, port, python=("-c", HUNG_GENERATION))
    servers.append(server)
    server.start()
    stuck = server.submit("a stuck one --steps 3", U1)
    waiting = server.submit("a waiting one --steps 4", U2)  # other steps: not in the stuck batch
    deadline = time.monotonic() + 60
    while server.job(stuck)["status"] != "running":
        assert time.monotonic() < deadline, server.job(stuck)
        time.sleep(0.1)

    # Event streams stay open until the job ends; uvicorn alone would wait for them forever.
    with server.client.stream("GET", f"/api/jobs/{stuck}/events") as running_events, \
            server.client.stream("GET", f"/api/jobs/{waiting}/events") as waiting_events:
        # Keep the line iterators: one dropped mid-stream closes its connection (httpcore does).
        streams = [events.iter_lines() for events in (running_events, waiting_events)]
        assert [next(lines) for lines in streams] == ["event: state", "event: state"]
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=grace + 10)
    assert code == 0, server.logs()[-3000:]

    rows = server.rows()
    assert (rows[stuck]["status"], rows[waiting]["status"]) == ("queued", "queued")  # run again at the next start
    logs = server.logs()
    assert f"job {rows[stuck]['id']} requeued" in logs
    assert "exiting without waiting for busy thread(s): gpu-worker" in logs
    assert "Traceback" not in logs
    server.assert_clean_logs()


@pytest.mark.parametrize("variable, library", [("TELEGRAM_TOKEN", "telegram"), ("DISCORD_TOKEN", "discord")])
def test_a_token_without_its_library_says_how_to_install_it(monkeypatch, variable, library):
    """The chat libraries are optional extras: a set token without one stops serve before anything starts."""
    from bot.config import Secrets
    from bot.serve import enabled_chat_frontends

    monkeypatch.setitem(sys.modules, library, None)  # as if not installed
    monkeypatch.delitem(sys.modules, f"bot.frontends.{library}", raising=False)
    for name in [m for m in sys.modules if m.startswith(f"bot.frontends.{library}.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(SystemExit, match=rf'{variable} is set, but .* pip install -e "\.\[{library}\]"'):
        enabled_chat_frontends(Secrets.from_env({variable: "x"}))
    assert enabled_chat_frontends(Secrets()) == []
