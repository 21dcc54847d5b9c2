"""GET /api/events: every job of the caller on one stream (the web page's), never another client's;
resumable with Last-Event-ID; one stream slot.

The stream never ends by itself, so it is read straight from the ASGI app, chunk by chunk (httpx's
ASGI transport hands a body over only once it is complete)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from bot.config import Secrets
from bot.frontends.web.api import create_app
from tests.helpers.service import start_service, stop_service

ALICE = {"X-Imagebot-User": "alice-0123456789abcdef"}
BOB = {"X-Imagebot-User": "bob-0123456789abcdef"}
ADMIN_TOKEN = "admin-token-for-tests-0123456789"
ADMIN = {"X-Imagebot-User": "root-0123456789abcdef", "Authorization": f"Bearer {ADMIN_TOKEN}"}
HOLDER = {"X-Imagebot-User": "holder-0123456789abcdef"}
FINISHED = ("done", "failed", "cancelled")
WAIT = 180.0


class Stream:
    """One open GET on the ASGI app: its status, and its events as they come (id, name, data)."""

    def __init__(self, app, path: str, headers: dict[str, str]) -> None:
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self.started = asyncio.Event()
        self.status = 0
        self.closed = asyncio.Event()
        self.buffer = ""
        self.pending: list[tuple[str | None, str, dict[str, Any]]] = []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "server": ("localhost", 80), "client": ("127.0.0.1", 50000),
                 "headers": [(b"host", b"localhost"),
                             *((name.lower().encode(), value.encode()) for name, value in headers.items())]}
        self.task = asyncio.create_task(app(scope, self._receive, self._send))

    async def _receive(self):
        if not getattr(self, "_asked", False):
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.closed.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started.set()
        elif message["type"] == "http.response.body":
            await self.chunks.put(message.get("body", b""))
            if not message.get("more_body"):
                await self.chunks.put(b"")

    async def next(self, timeout: float = WAIT) -> tuple[str | None, str, dict[str, Any]]:
        """The next event; TimeoutError when none comes in time."""
        async def wait():
            while not self.pending:
                chunk = await self.chunks.get()
                if not chunk:
                    raise EOFError("the stream ended")
                self.buffer += chunk.decode("utf-8")
                while "\n\n" in self.buffer:
                    block, self.buffer = self.buffer.split("\n\n", 1)
                    fields: dict[str, str] = {}
                    for line in block.splitlines():
                        if line.startswith(":") or ": " not in line:
                            continue
                        name, value = line.split(": ", 1)
                        fields[name] = value
                    if "event" in fields:
                        self.pending.append((fields.get("id"), fields["event"], json.loads(fields["data"])))
            return self.pending.pop(0)
        return await asyncio.wait_for(wait(), timeout)

    async def until_finished(self, job_ids: set[str]) -> list[tuple[str | None, str, dict[str, Any]]]:
        """Events until every job of `job_ids` has finished (by an ending event or a finished state)."""
        seen, left = [], set(job_ids)
        while left:
            event = await self.next()
            seen.append(event)
            _, name, data = event
            if name in FINISHED or name == "state" and data["status"] in FINISHED:
                left.discard(data["id"])
        return seen

    async def close(self) -> None:
        self.closed.set()
        try:
            await asyncio.wait_for(self.task, 10)
        except asyncio.CancelledError:
            pass


@pytest.fixture
async def stack(tmp_path, models_dir):
    config, store, executor, service = await start_service(tmp_path / "state", models_dir,
                                                           limits={"max_steps": 500},
                                                           web={"max_streams_per_client": 2})
    app = create_app(service, config, Secrets(admin_token=ADMIN_TOKEN))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost", timeout=60.0)
    streams: list[Stream] = []

    def open_stream(headers: dict[str, str], path: str = "/api/events") -> Stream:
        stream = Stream(app, path, headers)
        streams.append(stream)
        return stream

    yield client, service, open_stream
    for stream in streams:
        await stream.close()
    await client.aclose()
    await stop_service(service, store)


async def submit(client, prompt: str, headers: dict[str, str]) -> str:
    response = await client.post("/api/jobs", json={"prompt": prompt}, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


async def hold_worker(client) -> str:
    """A long job of someone else's keeps the worker busy until `release`."""
    job_id = await submit(client, "holding the worker --steps 500", HOLDER)

    async def running():
        while True:
            job = (await client.get(f"/api/jobs/{job_id}")).json()
            if job["status"] == "running" and (job["progress"] or {}).get("step", 0) >= 1:
                return
            await asyncio.sleep(0.02)
    await asyncio.wait_for(running(), WAIT)
    return job_id


async def release(client, job_id: str) -> None:
    assert (await client.delete(f"/api/jobs/{job_id}", headers=ADMIN)).status_code == 200


async def test_every_job_of_the_caller_and_none_of_anyone_elses(stack):
    client, service, open_stream = stack
    holder = await hold_worker(client)
    first = await submit(client, "a cat --steps 2 --seed 1", ALICE)  # before the stream opens
    alice = open_stream(ALICE)
    _, name, data = await alice.next()
    assert (name, data["id"], data["status"], data["position"]) == ("state", first, "queued", 1)
    bobs = await submit(client, "a dog --steps 2", BOB)
    second = await submit(client, "a cow --steps 2 --seed 3", ALICE)  # after: the stream tells it too
    await release(client, holder)
    events = await alice.until_finished({first, second})
    named = {data.get("job", data.get("id")) for _, _, data in events}
    assert named == {first, second}  # nothing of Bob's, nothing of the holder's
    assert all(event_id for event_id, _, _ in events)
    for job_id in (first, second):
        names = [name for _, name, data in events if data.get("job", data.get("id")) == job_id]
        assert "started" in names and "progress" in names and names[-1] == "done", names
    assert ("queued", second) in [(name, data["job"]) for _, name, data in events if name == "queued"]
    progress = [data for _, name, data in events if name == "progress" and data["job"] == second]
    assert [(p["step"], p["total"]) for p in progress] == [(1, 2), (2, 2)]
    assert all("batch" not in data for _, _, data in events)  # other jobs of a batch are not named
    done = next(data for _, name, data in events if name == "done" and data["id"] == second)
    assert done["images"][0]["url"] == f"/api/images/{second}-0.png"
    await alice.close()

    bob = open_stream(BOB)  # Bob's own finished job is not replayed to a fresh stream; Alice's never
    assert (await client.get(f"/api/jobs/{bobs}")).status_code == 200
    with pytest.raises(asyncio.TimeoutError):
        await bob.next(timeout=0.5)


async def test_resume_with_last_event_id_tells_what_happened_meanwhile(stack):
    client, service, open_stream = stack
    holder = await hold_worker(client)
    early = await submit(client, "a cat --steps 2", ALICE)
    late = await submit(client, "a dog --steps 2", ALICE)
    stream = open_stream(ALICE)
    seen = [await stream.next(), await stream.next()]
    assert [(name, data["id"]) for _, name, data in seen] == [("state", early), ("state", late)]
    last_id = seen[-1][0]
    await stream.close()  # gone while the jobs run

    await release(client, holder)

    async def finished(job_id: str):
        while (await client.get(f"/api/jobs/{job_id}")).json()["status"] not in FINISHED:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(finished(early), finished(late)), WAIT)
    waiting = await submit(client, "a cow --steps 500", ALICE)  # still unfinished at the reconnect
    resumed = open_stream({**ALICE, "Last-Event-ID": last_id})
    replay = [await resumed.next() for _ in range(3)]
    states = {data["id"]: data["status"] for _, name, data in replay if name == "state"}
    assert states == {early: "done", late: "done", waiting: states[waiting]}
    assert states[waiting] in ("queued", "running")
    assert all(event_id and event_id != last_id for event_id, _, _ in replay)

    fresh = open_stream(BOB)  # an id does not give away another client's jobs
    with pytest.raises(asyncio.TimeoutError):
        await fresh.next(timeout=0.5)
    forged = open_stream({**BOB, "Last-Event-ID": "1-1"})
    with pytest.raises(asyncio.TimeoutError):
        await forged.next(timeout=0.5)


async def test_the_stream_holds_a_slot(stack):
    client, service, open_stream = stack
    streams = [open_stream(ALICE), open_stream(ALICE)]  # max_streams_per_client = 2
    for stream in streams:
        await asyncio.wait_for(stream.started.wait(), WAIT)
        assert stream.status == 200
    third = open_stream(ALICE)
    await asyncio.wait_for(third.started.wait(), WAIT)
    assert third.status == 429
    await streams[0].close()
    await asyncio.sleep(0.1)
    again = open_stream(ALICE)
    await asyncio.wait_for(again.started.wait(), WAIT)
    assert again.status == 200
