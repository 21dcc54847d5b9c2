"""The worker under faults, positions and estimates, with the fake executor (no torch).

Faults are real: SQLite itself refuses the writes (`PRAGMA query_only`, `PRAGMA max_page_count`),
and the executor raises from inside `run()`.
"""

import asyncio

import pytest

from bot.core.errors import UserError
from bot.core.jobs import Origin, short_id
from bot.core.service import Service
from bot.stack import open_stack
from tests.helpers.service import service_config
from tests.helpers.executor import FakeExecutor, fake_model_store

ALICE = Origin("web", "alice", chat_id="web")
BOB = Origin("web", "bob", chat_id="web")
ADMIN = Origin("web", "root", chat_id="web", is_admin=True)


@pytest.fixture
async def make_service(tmp_path):
    stacks = []

    async def make(executor: FakeExecutor | None = None, **sections) -> Service:
        models = fake_model_store(tmp_path / "models")
        sections = {"models": {"rescan_seconds": 60.0}, "engine": {"max_batch": 1},
                    "queue": {"batch_window": 0.0, "max_queued_per_user": 0, "max_jobs_per_hour": 0}, **sections}
        stack = await open_stack(service_config(tmp_path / "state", models, **sections), executor or FakeExecutor())
        stacks.append(stack)
        return stack.service

    yield make
    for stack in stacks:
        stack.executor.gate.set()
        await stack.close()


async def finished(service, job_id, timeout=30.0):
    async def poll():
        while not (job := await service.job(job_id)).finished:
            await asyncio.sleep(0.01)
        return job
    return await asyncio.wait_for(poll(), timeout)


async def with_one_running(make_service, prompt, executor=None):
    """A service whose first job (`prompt`, Alice's) sits on the paused executor: everything
    submitted next waits. Returns (service, executor, that first job)."""
    executor = executor or FakeExecutor()
    service = await make_service(executor)
    executor.gate.clear()
    first = await service.submit(prompt, ALICE)
    await until(lambda: _running(service, first.job_id))
    return service, executor, first


async def until(condition, timeout=30.0):
    async def poll():
        while not await condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


async def test_the_worker_survives_a_database_that_refuses_writes_and_serves_the_next_job(make_service):
    service, executor, first = await with_one_running(make_service, "a cat --steps 2")
    await service.store.db.execute("PRAGMA query_only = ON")  # every write now fails inside SQLite
    executor.gate.set()
    await until(lambda: _unhealthy(service))
    health = await service.health()
    assert any("the worker failed" in problem for problem in health.problems)
    assert service.worker.alive and service.worker.failed_passes >= 1
    await service.store.db.execute("PRAGMA query_only = OFF")  # the disk came back
    assert (await finished(service, first.job_id)).status == "done"  # given back to the queue, then run
    second = await service.submit("a dog --steps 2", BOB)
    assert (await finished(service, second.job_id)).status == "done"
    assert (await service.health()).ok
    assert executor.batches[-2:] == [[first.job_id], [second.job_id]]


async def _running(service, job_id):
    return (await service.job(job_id)).status == "running"


async def _unhealthy(service):
    return not (await service.health()).ok


async def test_a_failing_executor_fails_its_batch_with_the_reason_and_the_next_job_runs(make_service):
    executor = FakeExecutor()
    executor.failures.append(RuntimeError("CUDA error: an illegal memory access was encountered"))
    service = await make_service(executor)
    broken = await service.submit("a cat --steps 2", ALICE)
    job = await finished(service, broken.job_id)
    assert job.status == "failed" and "illegal memory access" in job.error and job.error_key == "generation_failed"
    after = await service.submit("a dog --steps 2", BOB)
    assert (await finished(service, after.job_id)).status == "done"
    assert (await service.health()).ok


async def test_a_full_database_refuses_the_submit_keeps_everything_else_and_recovers(make_service):
    executor = FakeExecutor()
    service = await make_service(executor)
    executor.gate.clear()  # nothing runs: the queue only grows
    async with service.store.db.execute("PRAGMA page_count") as cursor:
        (pages,) = await cursor.fetchone()
    await service.store.db.execute(f"PRAGMA max_page_count = {pages}")
    accepted = []
    with pytest.raises(UserError) as refused:
        for n in range(10_000):
            accepted.append((await service.submit(f"job {n} " + "x" * 500, ADMIN)).job_id)
    assert refused.value.key == "storage_full" and "disk is full" in str(refused.value)
    async with service.store.db.execute("SELECT COUNT(*) FROM jobs") as cursor:
        assert (await cursor.fetchone())[0] == len(accepted) > 1  # the refused job left no trace
    assert len(service.waiting) == len(accepted) - 1  # the first one is on the (paused) executor
    health = await service.health()
    assert not health.ok and any("cannot be written" in problem for problem in health.problems)
    await service.store.db.execute("PRAGMA max_page_count = 1073741823")
    await asyncio.sleep(1.1)  # the health probe writes at most once a second
    assert (await service.health()).ok
    executor.gate.set()
    assert (await finished(service, accepted[-1])).status == "done"


async def test_positions_and_estimates_that_users_see(make_service):
    service, executor, running = await with_one_running(make_service, "first --steps 4", FakeExecutor(seconds_per_image_step=0.5))
    alice = [await service.submit(f"a{n} --steps 4", ALICE) for n in range(3)]
    bob = await service.submit("b0 --steps 4 --n 2", BOB)
    # Fair order: Alice was just served, so Bob's first job goes ahead of her waiting ones.
    assert [s.position for s in alice] == [1, 2, 3] and bob.position == 1
    views = {view.job.id: view for view in await service.queue_of(ALICE)}
    assert [views[s.job_id].position for s in alice] == [2, 3, 4]
    # Estimates: the running batch has not reported a step, so nothing can be said yet.
    assert all(views[s.job_id].eta_seconds is None for s in alice)
    executor.hold_at_step = 1  # then freeze the batch after its first step, so the numbers hold still
    executor.gate.set()
    await until(lambda: _progress(service, running.job_id))
    view = await service.status(alice[2].job_id)
    batch = service.worker.running
    left = batch.remaining_seconds()
    mean = 0.5 * (4 * 1 * 3 + 4 * 2) / 4  # seconds per image-step x (images x steps) of the 4 waiting, averaged
    assert view.position == 4
    assert view.eta_seconds == pytest.approx(left + 3 * mean + 0.5 * 4, abs=0.5)
    running_view = await service.status(running.job_id)
    assert running_view.step == 1 and running_view.eta_seconds == pytest.approx(0.5 * 3)
    executor.gate.set()


async def _progress(service, job_id):
    return (await service.status(job_id)).step


async def test_position_announcements_reach_followers_only_when_a_position_changes(make_service):
    service, executor, first = await with_one_running(make_service, "first --steps 1")
    waiting = [await service.submit(f"w{n} --steps 1", BOB) for n in range(3)]
    followed = service.subscribe(waiting[2].job_id)
    other = service.subscribe(waiting[0].job_id, platform="telegram")  # another platform's follower: nothing
    executor.gate.set()
    seen = []
    while len(seen) < 2:
        event = await followed.next(timeout=30)
        if event["type"] == "position":
            seen.append(event["position"])
    assert seen == [2, 1]
    assert other.queue.empty()
    followed.close()
    other.close()


async def test_cancel_latest_and_who_may_cancel(make_service):
    executor = FakeExecutor()
    service = await make_service(executor)
    executor.gate.clear()
    with pytest.raises(UserError) as nothing:
        await service.cancel_latest(ALICE)
    assert nothing.value.key == "nothing_to_cancel"
    older = await service.submit("one", ALICE)
    newer = await service.submit("two", ALICE)
    with pytest.raises(UserError) as not_yours:
        await service.cancel(newer.job_id, BOB)
    assert not_yours.value.key == "not_your_job"
    with pytest.raises(UserError):
        await service.owned_job(older.job_id, BOB)
    assert (await service.owned_job(older.job_id, ADMIN)).id == older.job_id
    job_id, status = await service.cancel_latest(ALICE)
    assert job_id == newer.job_id and status in ("cancelled", "cancelling")
    assert newer.job_id not in service.waiting


async def test_a_chat_frontend_hears_a_deep_job_move_up_by_tenths_then_every_place_near_the_front(make_service):
    service, executor, first = await with_one_running(make_service, "first --steps 1")
    jobs = [await service.submit(f"job {n} --steps 1", Origin("web", f"user{n}", chat_id="web")) for n in range(30)]
    last = jobs[-1]
    assert last.position == 30
    platform = service.subscribe(platform="web")  # as a chat frontend follows every job of its platform
    executor.gate.set()
    heard = []
    while not heard or heard[-1] > 1:
        event = await platform.next(timeout=30)
        if event["type"] == "position" and event["job"] == last.job_id:
            heard.append(event["position"])
    platform.close()
    assert heard == [27, 24, 21, 18, 16, 14, 12, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1]


async def test_jobs_are_named_by_unguessable_public_ids_outside_the_process(make_service):
    service = await make_service()
    first = await service.submit("one --steps 1", ALICE)
    second = await service.submit("two --steps 1", ALICE)
    assert len(first.public_id) == 24 and first.public_id != second.public_id
    assert (await service.job(first.public_id)).id == first.job_id
    assert (await service.status(second.public_id)).job.public_id == second.public_id
    for guess in (str(first.job_id), first.public_id.upper(), first.public_id[:-1], "", "../etc"):
        with pytest.raises(UserError) as refused:
            await service.job(guess)
        assert refused.value.key == "job_not_found"
    with pytest.raises(UserError):
        await service.cancel(first.public_id, BOB)  # knowing the id lets you read it, not cancel it


async def test_clients_that_rotate_user_keys_are_still_limited_by_their_address(make_service):
    service = await make_service(queue={"max_queued_per_user": 2, "max_queued_per_address": 5,
                                        "max_jobs_per_hour_per_address": 6})
    service.executor.gate.clear()
    accepted, refused = [], 0
    for n in range(80):  # a new key every time, all from one address
        try:
            accepted.append((await service.submit("a cat", Origin("web", f"key{n:04}", address="203.0.113.9"))).job_id)
        except UserError as error:
            assert error.key == "address_queue_full"
            refused += 1
    assert (len(accepted), refused) == (5, 75)
    await service.submit("a cat", Origin("web", "neighbour", address="203.0.113.10"))  # others are not held up
    for job_id in accepted[-2:]:  # room again in the queue, but not in the hour
        await service.cancel(job_id, ADMIN)
    await service.submit("a cat", Origin("web", "again", address="203.0.113.9"))
    with pytest.raises(UserError) as hourly:
        await service.submit("a cat", Origin("web", "again2", address="203.0.113.9"))
    assert hourly.value.key == "address_rate_limited"
    await service.submit("a cat", Origin("web", "root", address="203.0.113.9", is_admin=True))  # admins exempt


async def test_one_blocklist_for_every_frontend_with_adult_places_exempt(make_service):
    service = await make_service(moderation={"blocklist": ["gore", "blood bath"]})
    for origin in (ALICE, Origin("telegram", "1", chat_id="-5"), Origin("discord", "2", chat_id="9")):
        with pytest.raises(UserError) as refused:
            await service.submit("a GORE scene", origin)
        assert refused.value.key == "blocked_word" and refused.value.params == {"word": "gore"}
    with pytest.raises(UserError):
        await service.submit("a blood  bath --steps 1".replace("  ", " "), ALICE)  # phrases too
    await service.submit("gorest forest --no gore", ALICE)  # whole words, and not what to leave out
    await service.submit("a gore scene", Origin("discord", "2", chat_id="9", adult_content=True))


async def test_bans_say_why_unbans_restore_and_admin_actions_are_audited(make_service):
    service = await make_service()
    service.executor.gate.clear()
    with pytest.raises(UserError) as no_reason:
        await service.ban(BOB.user_key, "  ", ADMIN)
    assert no_reason.value.key == "ban_needs_reason"
    with pytest.raises(UserError):
        await service.ban(BOB.user_key, "spam", ALICE)  # admins only
    await service.ban(BOB.user_key, "spam", ADMIN)
    with pytest.raises(UserError, match="spam"):
        await service.submit("a cat", BOB)
    await service.unban(BOB.user_key, ADMIN)
    bobs = await service.submit("a cat", BOB)
    await service.submit("a dog", ALICE)
    await service.cancel(bobs.public_id, ADMIN)
    with pytest.raises(UserError):
        await service.audit_log(ALICE)
    actions = [(entry["action"], entry["detail"].get("user")) for entry in await service.audit_log(ADMIN)]
    assert actions == [("cancel", BOB.user_key), ("unban", BOB.user_key), ("ban", BOB.user_key)]


async def test_own_unfinished_jobs_are_found_by_the_short_id_chats_show(make_service):
    service = await make_service()
    service.executor.gate.clear()
    await service.submit("holds the worker", Origin("web", "carol", chat_id="web"))
    mine = await service.submit("one", ALICE)  # waits, so cancelling it finishes it at once
    theirs = await service.submit("two", BOB)
    short = short_id(mine.public_id)
    assert len(short) == 6 and mine.public_id.startswith(short)
    for said in (short, "#" + short, short.upper(), mine.public_id):
        assert (await service.own_job_by_prefix(said, ALICE)).id == mine.job_id
    for said, by in ((short_id(theirs.public_id), ALICE),  # someone else's job is not found, even by admins
                     (short, ADMIN), ("abc", ALICE), ("zzzzzz", ALICE), ("", ALICE), (str(mine.job_id), ALICE)):
        with pytest.raises(UserError) as refused:
            await service.own_job_by_prefix(said, by)
        assert refused.value.key == "job_not_found"
    await service.cancel(mine.public_id, ALICE)
    with pytest.raises(UserError):  # finished jobs are not searched
        await service.own_job_by_prefix(short, ALICE)


async def test_a_short_id_that_names_two_own_jobs_asks_for_more(make_service):
    service = await make_service()
    service.executor.gate.clear()
    first = await service.submit("one", ALICE)
    second = await service.submit("two", ALICE)
    common = next(n for n in range(24) if first.public_id[n] != second.public_id[n])
    if common < 4:  # make the two ids share a long prefix, as the check needs
        await service.store.db.execute("UPDATE jobs SET public_id = ? WHERE id = ?",
                                       (first.public_id[:6] + second.public_id[6:], second.job_id))
        await service.store.db.commit()
    with pytest.raises(UserError) as refused:
        await service.own_job_by_prefix(first.public_id[:4], ALICE)
    assert refused.value.key == "job_ambiguous"
    assert (await service.own_job_by_prefix(first.public_id, ALICE)).id == first.job_id
