"""The SQLite job store: migrations, atomic claims, recovery, delivery, quotas."""

import json
import sqlite3

import pytest

from bot.core.jobs import ImageResult, Origin, is_public_id
from bot.core.request import GenerationRequest
from bot.core.schema import MIGRATIONS
from bot.core.store import Store
from bot.core.store_jobs import batch_key_text

ALICE = Origin("web", "alice", chat_id="c1", reply={"reply_to": 42}, locale="vi")
BOB = Origin("telegram", "bob", chat_id="c2")


def make_request(prompt="a cat", count=1, model="demo"):
    return GenerationRequest(prompt=prompt, negative_prompt="", model=model, seed=1, steps=3, guidance=7.0,
                             width=64, height=64, count=count)


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "state" / "jobs.sqlite3")
    yield store
    await store.close()


async def test_migrations_set_user_version_and_wal(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    await store.close()
    connection = sqlite3.connect(tmp_path / "db.sqlite3")
    assert connection.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    again = await Store.open(tmp_path / "db.sqlite3")  # reopening applies nothing twice
    assert await again.migrate() == len(MIGRATIONS)
    await again.close()


async def test_jobs_queued_before_the_scheduler_columns_existed_are_upgraded_in_place(tmp_path):
    """A database of the first schema, with jobs waiting, gains the columns the queue reads; they
    hold what the current code would have written (so old and new jobs still batch together)."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version = 1; COMMIT;")
    requests = [make_request(), GenerationRequest(prompt="x", negative_prompt="", model="sd", seed=None, steps=30,
                                                  guidance=7.5, width=768, height=512, count=2,
                                                  init_image="/in.png", strength=0.6)]
    for request, origin in zip(requests, (ALICE, Origin("web", "root", is_admin=True))):
        old.execute("INSERT INTO jobs (status, request, origin, platform, user_key, model, images, created_at) "
                    "VALUES ('queued', ?, ?, ?, ?, ?, ?, 0)",
                    (json.dumps(request.to_dict()), origin.to_json(), origin.platform, origin.user_key,
                     request.model, request.count))
    old.commit()
    old.close()
    store = await Store.open(path)
    queued = await store.queued()
    assert [(q.steps, q.is_admin, q.images) for q in queued] == [(3, False, 1), (30, True, 2)]
    assert [q.batch_key for q in queued] == [batch_key_text(r) for r in requests]
    new = await store.add_job(make_request(), BOB)
    assert new.batch_key == queued[0].batch_key
    public_ids = [(await store.get(q.id)).public_id for q in queued] + [new.public_id]
    assert all(is_public_id(p) for p in public_ids) and len(set(public_ids)) == 3  # old jobs got one too
    assert [await store.id_of(p) for p in public_ids] == [queued[0].id, queued[1].id, new.id]
    await store.close()


async def test_a_job_round_trips_with_its_origin(store):
    job_id = (await store.add_job(make_request("một người phụ nữ mặc áo dài", count=2), ALICE)).id
    job = await store.get(job_id)
    assert job.status == "queued" and job.attempts == 0
    assert job.request.prompt == "một người phụ nữ mặc áo dài" and job.request.count == 2
    assert job.origin == ALICE
    assert await store.get(999) is None


async def test_claim_is_atomic_and_only_takes_queued_jobs(store):
    first = (await store.add_job(make_request(), ALICE)).id
    second = (await store.add_job(make_request(), BOB)).id
    claimed = await store.claim([first, second])
    assert [j.id for j in claimed] == [first, second]
    assert all(j.status == "running" and j.attempts == 1 for j in claimed)
    assert await store.claim([first, second]) == []  # a second claim gets nothing


async def test_finish_fail_and_cancel(store):
    done, failed, queued_cancel, running_cancel = [(await store.add_job(make_request(), ALICE)).id for _ in range(4)]
    await store.claim([done, failed, running_cancel])
    assert await store.finish(done, [ImageResult("job1-0.png", 1)], None)
    assert await store.fail(failed, "boom", "generation_failed", {"error": "boom"})
    assert await store.cancel(queued_cancel) == "cancelled"
    assert await store.cancel(running_cancel) == "running"
    assert (await store.get(running_cancel)).cancel_requested
    assert await store.mark_cancelled(running_cancel)
    assert (await store.get(done)).images == (ImageResult("job1-0.png", 1),)
    assert (await store.get(failed)).error_key == "generation_failed"
    assert await store.cancel(done) is None  # finished jobs stay as they are
    assert not await store.finish(done, [], None)  # a finished job is never finished twice
    assert await store.counts_by_status() == {"done": 1, "failed": 1, "cancelled": 2}


async def test_recovery_requeues_interrupted_jobs_and_gives_up_on_repeat_offenders(store):
    once = (await store.add_job(make_request(), ALICE)).id
    crashy = (await store.add_job(make_request(), BOB)).id
    await store.claim([once, crashy])
    await store.requeue(crashy)
    await store.claim([crashy])  # second attempt, interrupted again
    recovery = await store.recover(max_attempts=2)
    assert recovery.requeued == (once,) and recovery.failed == (crashy,)
    assert (await store.get(once)).status == "queued"
    failed = await store.get(crashy)
    assert failed.status == "failed" and failed.error_key == "worker_crashed" and failed.error_params == {"attempts": 2}


async def test_undelivered_results_survive_until_marked(tmp_path):
    store = await Store.open(tmp_path / "state" / "jobs.sqlite3")
    job_id = (await store.add_job(make_request(), BOB)).id
    await store.claim([job_id])
    await store.finish(job_id, [ImageResult("a.png", 1)], None)
    await store.close()
    reopened = await Store.open(tmp_path / "state" / "jobs.sqlite3")
    try:
        assert [j.id for j in await reopened.undelivered("telegram")] == [job_id]
        assert await reopened.undelivered("discord") == []
        await reopened.set_delivery(job_id, "delivered")
        assert await reopened.undelivered("telegram") == []
    finally:
        await reopened.close()


async def test_usage_quota_counters_and_bans(store):
    for _ in range(3):
        await store.add_usage(ALICE.user_key, 2, now=7200.0)
    await store.add_usage(ALICE.user_key, 1, now=3700.0)  # previous hour still counts
    await store.add_usage(ALICE.user_key, 1, now=100.0)  # two hours ago does not
    assert await store.usage_last_hour(ALICE.user_key, now=7300.0) == 4
    assert await store.bans() == {}
    await store.ban(BOB.user_key, "spam", "web:admin")
    await store.ban("address:192.0.2.1", "spam", "web:admin")
    await store.ban("web:key-from-there", "spam", "address:192.0.2.1")
    assert await store.bans() == {BOB.user_key: "spam", "address:192.0.2.1": "spam", "web:key-from-there": "spam"}
    assert await store.bans_by("address:192.0.2.1") == ["web:key-from-there"]
    await store.unban(BOB.user_key)
    assert BOB.user_key not in await store.bans()


async def test_settings_chat_settings_and_audit(store):
    await store.set_setting("default_model", "finetuned")
    assert await store.get_setting("default_model") == "finetuned"
    await store.set_chat_setting("telegram", "c2", "model", "demo")
    assert await store.chat_settings("telegram", "c2") == {"model": "demo"}
    await store.set_chat_setting("telegram", "c2", "model", None)
    assert await store.chat_settings("telegram", "c2") == {}
    await store.audit("telegram:bob", "set_default_model", {"model": "demo"})
    [entry] = await store.audit_log()
    assert entry["actor"] == "telegram:bob" and entry["detail"] == {"model": "demo"}


async def test_queued_view_for_the_scheduler(store):
    first = (await store.add_job(make_request(count=2), ALICE)).id
    second = (await store.add_job(make_request(model="other"), Origin("web", "carol", is_admin=True))).id
    queued = await store.queued()
    assert [(q.id, q.user_key, q.model, q.images, q.is_admin) for q in queued] == [
        (first, "web:alice", "demo", 2, False), (second, "web:carol", "other", 1, True)]
    assert queued[0].batch_key != queued[1].batch_key
    assert await store.count_unfinished("web:alice") == 1


async def test_concurrent_submits_reads_and_writes_share_one_connection_safely(store):
    """Submits (transactions), readers holding cursors and the worker's single writes interleave at
    every await on one connection: none may commit another's half-read statement or fail."""
    import asyncio

    done = await store.add_job(make_request("finished"), BOB)
    await store.claim([done.id])

    async def submit(n):
        await store.add_job(make_request(f"job {n}"), ALICE if n % 2 else BOB)

    async def read(n):
        await store.queued()
        await store.history("alice")
        await store.counts_by_status()

    async def write(n):
        await store.set_setting(f"key{n}", str(n))
        await store.audit("admin", "test", {"n": n})

    await asyncio.gather(*(task(n) for n in range(60) for task in (submit, read, write)))
    assert len(await store.queued()) == 60
    assert await store.get_setting("key59") == "59"
    assert len(await store.audit_log(limit=100)) == 60


async def test_a_failed_transaction_rolls_back_only_its_own_writes(store):
    """A write from elsewhere that arrives while a transaction is open is not part of it."""
    import asyncio

    started = asyncio.Event()

    async def failing_transaction():
        with pytest.raises(RuntimeError):
            async with store.transaction():
                await store.db.execute("INSERT INTO settings (key, value) VALUES ('mine', '1')")
                started.set()
                await asyncio.sleep(0.05)
                raise RuntimeError("refused")

    async def other_writer():
        await started.wait()
        await store.set_setting("theirs", "2")

    await asyncio.gather(failing_transaction(), other_writer())
    assert await store.get_setting("mine") is None
    assert await store.get_setting("theirs") == "2"
