"""The worker with an executor that takes several batches at once, loses batches (a remote worker
that died) or cannot be reached (a cluster that is down): fake executor, real store (no torch)."""

import asyncio

import pytest

from bot.core.executor import ExecutorUnavailable
from bot.core.jobs import Origin
from bot.stack import open_stack
from tests.helpers.executor import FakeExecutor, fake_model_store
from tests.helpers.service import service_config

ALICE = Origin("web", "alice", chat_id="web")
BOB = Origin("web", "bob", chat_id="web")


@pytest.fixture
async def make_service(tmp_path):
    stacks = []

    async def make(executor: FakeExecutor, **queue):
        models = fake_model_store(tmp_path / "models")
        config = service_config(tmp_path / "state", models, models={"rescan_seconds": 60.0},
                                engine={"max_batch": 1},
                                queue={"batch_window": 0.0, "max_queued_per_user": 0, "max_jobs_per_hour": 0, **queue})
        stack = await open_stack(config, executor)
        stacks.append(stack)
        return stack.service

    yield make
    for stack in stacks:
        stack.executor.gate.set()
        await stack.close()


async def until(condition, timeout=30.0):
    async def poll():
        while not await condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def finished(service, job_id):
    await until(lambda: _finished(service, job_id))
    return await service.job(job_id)


async def _finished(service, job_id):
    return (await service.job(job_id)).finished


async def test_batches_run_side_by_side_up_to_the_executors_capacity_and_no_further(make_service):
    executor = FakeExecutor(seconds_per_image_step=0.01, capacity=2)
    service = await make_service(executor)
    executor.gate.clear()
    jobs = [await service.submit(f"job {n} --steps 2", ALICE if n % 2 else BOB) for n in range(5)]

    async def running_ids():
        return [s.job_id for s in jobs if (await service.job(s.job_id)).status == "running"]

    async def two_running():
        return len(await running_ids()) == 2
    await until(two_running)
    await asyncio.sleep(0.2)  # a third would have been claimed by now
    assert await two_running() and len(service.waiting) == 3
    assert len(service.worker.in_flight) == 2
    # Each running job reports its own batch; waiting ones count from the first slot to free up.
    running = await running_ids()
    assert {service.worker.batch_of(job_id).job_ids for job_id in running} == {(running[0],), (running[1],)}
    executor.gate.set()
    for submitted in jobs:
        assert (await finished(service, submitted.job_id)).status == "done"
    assert executor.most_in_flight == 2
    assert sorted(job for batch in executor.batches for job in batch) == sorted(s.job_id for s in jobs)


async def test_one_slot_keeps_one_batch_at_a_time(make_service):
    executor = FakeExecutor(seconds_per_image_step=0.005)
    service = await make_service(executor)
    jobs = [await service.submit(f"job {n} --steps 2", ALICE) for n in range(4)]
    for submitted in jobs:
        assert (await finished(service, submitted.job_id)).status == "done"
    assert executor.most_in_flight == 1


async def test_a_lost_batch_runs_again_with_the_same_request_and_finishes_once(make_service):
    executor = FakeExecutor()
    executor.lost = 1
    service = await make_service(executor)
    follow = service.subscribe()
    submitted = await service.submit("a cat --steps 2 --seed 7", ALICE)
    job = await finished(service, submitted.job_id)
    assert job.status == "done" and job.attempts == 2 and [i.seed for i in job.images] == [7]
    assert executor.batches == [[submitted.job_id], [submitted.job_id]]
    assert service.worker.requeued == 1
    events = []
    while not follow.queue.empty():
        events.append(follow.queue.get_nowait()["type"])
    assert events.count("done") == 1 and "failed" not in events


async def test_a_job_lost_every_time_fails_after_its_attempts(make_service):
    executor = FakeExecutor()
    executor.lost = 5
    service = await make_service(executor, max_attempts=2)
    submitted = await service.submit("a cat --steps 2", ALICE)
    job = await finished(service, submitted.job_id)
    assert job.status == "failed" and job.error_key == "worker_crashed" and job.attempts == 2
    assert "2 attempts" in job.error


async def test_an_unreachable_executor_leaves_jobs_queued_without_using_attempts_then_runs_them(make_service):
    executor = FakeExecutor()
    executor.failures += [ExecutorUnavailable("the Ray cluster at ray://head:10001 is unreachable")] * 2
    service = await make_service(executor)
    submitted = await service.submit("a cat --steps 2", ALICE)
    await until(lambda: _unhealthy(service))
    health = await service.health()
    assert any("unreachable" in problem and "wait in the queue" in problem for problem in health.problems)
    job = await finished(service, submitted.job_id)
    assert job.status == "done" and job.attempts == 1  # the two calls that never ran are not counted
    assert (await service.health()).ok


async def _unhealthy(service):
    return not (await service.health()).ok
