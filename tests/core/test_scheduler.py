"""The scheduler over the in-memory queue: fairness, model affinity with a bound, batching."""

import json

from bot.core.jobs import QueuedJob
from bot.core.scheduler import Scheduler
from bot.core.waiting import WaitingIndex

SETTINGS = json.dumps(["demo", 64, 64, 3, 7.0, "dpm++", False, None])


def job(job_id, user, model="demo", images=1, created=0.0, key=None):
    key = key or SETTINGS.replace('"demo"', f'"{model}"')
    return QueuedJob(job_id, user, model, key, images, 3, created)


def pick(scheduler, waiting, loaded, now):
    """One batch picked and taken from the queue, as the worker does."""
    batch = scheduler.pick(waiting, loaded, now)
    waiting.take(batch)
    return batch


def run_all(scheduler, queue, loaded=None, now=0.0):
    """Pick batches until the queue is empty; returns the batches as lists of ids."""
    waiting = WaitingIndex(queue)
    batches = []
    while len(waiting):
        batch = pick(scheduler, waiting, loaded, now)
        batches.append([j.id for j in batch])
        loaded = batch[0].model
    return batches


def test_a_user_with_many_jobs_delays_another_users_job_by_at_most_one_batch():
    queue = [job(i, "web:alice") for i in range(1, 21)] + [job(21, "web:bob")]
    batches = run_all(Scheduler(max_batch=1), queue)
    assert 21 in batches[0] + batches[1]


def test_users_take_turns():
    queue = [job(1, "a"), job(2, "a"), job(3, "a"), job(4, "b"), job(5, "b"), job(6, "c")]
    order = [b[0] for b in run_all(Scheduler(max_batch=1), queue)]
    assert order == [1, 4, 6, 2, 5, 3]


def test_compatible_jobs_share_a_batch_up_to_max_batch_images():
    queue = [job(1, "a", images=2), job(2, "b", images=1), job(3, "c", images=2), job(4, "d", images=1)]
    batch = Scheduler(max_batch=4).pick(WaitingIndex(queue), None, 0.0)
    assert sum(j.images for j in batch) <= 4
    assert [j.id for j in batch] == [1, 2, 4]  # job 3 (2 images) does not fit after 1 and 2


def test_incompatible_jobs_never_share_a_batch():
    other_steps = SETTINGS.replace(", 3,", ", 30,")
    queue = [job(1, "a"), job(2, "b", key=other_steps), job(3, "c")]
    batch = Scheduler(max_batch=8).pick(WaitingIndex(queue), None, 0.0)
    assert [j.id for j in batch] == [1, 3]


def test_a_job_larger_than_max_batch_still_runs():
    assert [j.id for j in Scheduler(max_batch=2).pick(WaitingIndex([job(1, "a", images=4)]), None, 0.0)] == [1]


def test_the_loaded_model_is_preferred():
    queue = [job(1, "a", model="sd15", created=0.0), job(2, "b", model="demo", created=1.0)]
    assert Scheduler().pick(WaitingIndex(queue), "demo", now=10.0)[0].id == 2


def test_but_not_past_the_wait_bound():
    queue = [job(1, "a", model="sd15", created=0.0), job(2, "b", model="demo", created=100.0)]
    scheduler = Scheduler(max_switch_wait=60.0)
    assert scheduler.pick(WaitingIndex(queue), "demo", now=61.0)[0].id == 1


def test_affinity_does_not_starve_a_waiting_model_forever():
    """A steady stream for the loaded model cannot keep another model's job waiting beyond the bound."""
    scheduler = Scheduler(max_batch=1, max_switch_wait=30.0)
    starving = job(1, "x", model="sd15", created=0.0)
    waiting = WaitingIndex([starving])
    now = 0.0
    served_at = None
    for i in range(2, 100):
        waiting.add(job(i, f"user{i}", model="demo", created=now))
        batch = pick(scheduler, waiting, "demo", now)
        if starving in batch:
            served_at = now
            break
        now += 5.0
    assert served_at is not None and served_at <= 35.0


def test_positions_predict_the_order_of_service():
    waiting = WaitingIndex([job(1, "a"), job(2, "a"), job(3, "b")])
    assert [j.id for j in waiting.in_order()] == [1, 3, 2]
    assert [waiting.position(i) for i in (1, 2, 3)] == [1, 3, 2]
    served = [batch[0] for batch in run_all(Scheduler(max_batch=1), list(waiting.in_order()))]
    assert served == [1, 3, 2]


def test_a_large_batch_looks_only_a_bounded_way_ahead_for_partners():
    """Batch partners are found among the next LOOKAHEAD jobs in fair order, however long the queue."""
    from bot.core.scheduler import LOOKAHEAD

    other = SETTINGS.replace(", 3,", ", 30,")
    queue = [job(1, "lead")] + [job(i, f"u{i}", key=other) for i in range(2, LOOKAHEAD + 10)]
    queue.append(job(LOOKAHEAD + 10, "late"))  # compatible, but far behind
    batch = Scheduler(max_batch=4).pick(WaitingIndex(queue), None, 0.0)
    assert [j.id for j in batch] == [1]


def test_empty_queue_gives_no_batch():
    assert Scheduler().pick(WaitingIndex(), "demo", 0.0) == []
