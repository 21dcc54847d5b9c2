"""The delivery loop the chat frontends share, against a stand-in service (the real event bus) and a
stand-in platform that records what it was asked to do."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any, Callable

import pytest

from bot.core.jobs import DELIVERED, DELIVERY_FAILED, DONE, QUEUED, Job, Origin
from bot.core.request import GenerationRequest
from bot.core.service import EventBus
from bot.frontends import delivery
from bot.frontends.delivery import DeliveryLoop, RetryLater, Undeliverable

PLATFORM = "chat"
REQUEST = GenerationRequest(prompt="a fox", negative_prompt="", model="demo", seed=1, steps=2, guidance=7.0,
                            width=64, height=64)


def job(job_id: int, status: str = DONE, **fields: Any) -> Job:
    return Job(job_id, status, REQUEST, Origin(PLATFORM, "1", chat_id="1"), **fields)


class Service:
    """What the loop uses of the service; counts store reads."""

    def __init__(self, *jobs: Job) -> None:
        self.bus = EventBus()
        self.jobs = {j.id: j for j in jobs}
        self.reads: list[int] = []
        self.calls: list[str] = []
        self.while_reading_undelivered: Callable[[], None] = lambda: None

    def subscribe(self, job_id: int | None = None, platform: str | None = None):
        self.calls.append("subscribe")
        return self.bus.subscribe(job_id, platform)

    async def undelivered(self, platform: str) -> list[Job]:
        self.calls.append("undelivered")
        pending = [j for j in self.jobs.values() if j.finished and j.delivery == "pending"]
        self.while_reading_undelivered()
        return pending

    async def job(self, job_id: int) -> Job:
        self.reads.append(job_id)
        return self.jobs[job_id]

    async def mark_delivered(self, job_id: int, delivered: bool = True) -> None:
        self.jobs[job_id] = replace(self.jobs[job_id], delivery=DELIVERED if delivered else DELIVERY_FAILED)

    def publish(self, kind: str, job_id: Any, **extra: Any) -> None:
        self.bus.publish({"type": kind, "job": job_id, **extra}, PLATFORM)


class Platform:
    """Follows the jobs in `followed`, takes up those in `adoptable`; `failures[job]` are raised by
    the tries to send it, one per try."""

    def __init__(self, followed=(), adoptable=(), failures: dict[int, list[Exception]] | None = None) -> None:
        self.followed = set(followed)
        self.adoptable = set(adoptable)
        self.failures = failures or {}
        self.adopted: list[int] = []
        self.progress: list[tuple[int, str]] = []
        self.sent: list[int] = []
        self.released: list[int] = []

    def follows(self, job_id: int) -> bool:
        return job_id in self.followed

    async def adopt(self, job_id: int) -> bool:
        self.adopted.append(job_id)
        if job_id in self.adoptable:
            self.followed.add(job_id)
        return job_id in self.followed

    async def on_progress(self, job_id: int, event: dict) -> None:
        if event.get("bad"):
            raise RuntimeError("a bad event")
        self.progress.append((job_id, event["type"]))

    async def send_result(self, job: Job) -> None:
        self.sent.append(job.id)
        if self.failures.get(job.id):
            raise self.failures[job.id].pop(0)

    async def release(self, job_id: int) -> None:
        self.released.append(job_id)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.001)
    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def running():
    """running(service, platform) -> a started loop; stopped after the test."""
    loops: list[DeliveryLoop] = []

    async def start(service: Service, platform: Platform) -> DeliveryLoop:
        loop = DeliveryLoop(service, PLATFORM, platform)
        loops.append(loop)
        await loop.start()
        return loop

    yield start
    for loop in loops:
        await loop.stop()


async def test_events_of_jobs_nobody_follows_cost_no_store_read(running):
    waiting = [job(i, QUEUED) for i in range(1, 2001)]
    service = Service(*waiting, job(3000))
    platform = Platform(followed={1}, adoptable={7})
    await running(service, platform)
    for _ in range(3):  # three batches announce every waiting job's position
        for j in waiting:
            service.publish("position", j.id, position=j.id)
    service.publish("progress", 2, step=1, total=2)
    service.publish("queued", 7, position=7)  # a job the platform can take up
    service.publish("started", 8, batch=[8])  # one it cannot
    service.publish("position", 7, position=6)
    service.publish("done", 3000)  # handled after everything before it
    await until(lambda: service.jobs[3000].delivery == DELIVERED)

    assert service.reads == [3000]  # only the finished job was read
    assert platform.adopted == [7, 8]
    assert platform.progress == [(1, "position")] * 3 + [(7, "queued"), (7, "position")]


async def test_each_result_is_sent_once_and_its_outcome_recorded(running, monkeypatch, caplog):
    monkeypatch.setattr(delivery, "FIRST_RETRY_SECONDS", 0.01)
    service = Service(job(1), job(2), job(3), job(4, delivery=DELIVERED), job(5), job(6, delivery=DELIVERED))
    platform = Platform(failures={2: [Undeliverable("the chat is gone")],
                                  3: [RetryLater("network down"), RetryLater("flood limit", after=0.02)],
                                  5: [RuntimeError("a bug")]})
    await running(service, platform)  # 1, 2, 3 and 5 are pending from before: sent at start
    for job_id in (1, 1, 2, 3, 4, 6):  # final events too, some twice, some of jobs delivered long ago
        service.publish("done", job_id)
    await until(lambda: {5, 6} <= set(platform.released) and all(
        service.jobs[job_id].delivery != "pending" for job_id in (1, 2, 3)))

    assert sorted(platform.sent) == [1, 2, 3, 3, 3, 5]  # 3 was tried again until it went through
    assert {j.id: j.delivery for j in service.jobs.values()} == {
        1: DELIVERED, 2: DELIVERY_FAILED, 3: DELIVERED, 4: DELIVERED, 5: "pending", 6: DELIVERED}
    assert "job 2: result not delivered, giving up: the chat is gone" in caplog.text
    assert "job 5: delivery stopped" in caplog.text  # a bug leaves it pending for the next start


async def test_a_job_finishing_while_the_undelivered_are_read_is_not_missed(running):
    service = Service(job(1), job(2, QUEUED))

    def finishes() -> None:  # job 2 finishes after the list was made, before start() returns
        service.jobs[2] = job(2)
        service.publish("done", 2)

    service.while_reading_undelivered = finishes
    platform = Platform()
    await running(service, platform)
    await until(lambda: all(j.delivery == DELIVERED for j in service.jobs.values()))
    assert service.calls == ["subscribe", "undelivered"]
    assert sorted(platform.sent) == [1, 2]


async def test_a_bad_event_does_not_end_the_loop(running, caplog):
    caplog.set_level(logging.ERROR)
    service = Service(job(1, QUEUED), job(2))
    service.jobs[2] = replace(service.jobs[2], delivery=DELIVERED)
    platform = Platform(followed={1})
    await running(service, platform)
    service.publish("progress", 1, step=1, total=2, bad=True)
    service.bus.publish({"type": "position"}, PLATFORM)  # no job id at all
    service.publish("progress", 1, step=2, total=2)
    service.jobs[2] = replace(service.jobs[2], delivery="pending")
    service.publish("done", 2)
    await until(lambda: service.jobs[2].delivery == DELIVERED)
    assert platform.progress == [(1, "progress")]
    assert caplog.text.count("could not handle event") == 2


async def test_stopping_leaves_a_result_that_is_being_retried_pending(running, monkeypatch):
    monkeypatch.setattr(delivery, "FIRST_RETRY_SECONDS", 60.0)
    service = Service(job(1))
    platform = Platform(failures={1: [RetryLater("network down")]})
    loop = await running(service, platform)
    await until(lambda: platform.sent == [1])
    await loop.stop()
    assert service.jobs[1].delivery == "pending" and platform.released == [1]
