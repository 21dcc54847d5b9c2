"""The in-memory queue index against a plain re-computation of the fair order.

The index answers positions without walking the queue; here every answer is compared, after
each of thousands of random changes, with the order computed the slow, obvious way.
"""

import random

import pytest

from bot.core.jobs import QueuedJob
from bot.core.waiting import WaitingIndex


def entry(job_id, user, model="demo", images=1, steps=3):
    return QueuedJob(job_id, user, model, f'["{model}"]', images, steps, float(job_id))


class Reference:
    """The fair order as a definition: users take turns, least recently served first (never
    served before served, then by their oldest job), each user's jobs oldest first."""

    def __init__(self):
        self.jobs = {}
        self.last_served = {}  # user -> (turn, order within the turn)
        self.turn = 0

    def order(self):
        per_user = {}
        for job_id in sorted(self.jobs):
            per_user.setdefault(self.jobs[job_id].user_key, []).append(job_id)
        users = sorted(per_user, key=lambda u: self.last_served.get(u, (0, per_user[u][0])))
        out, depth = [], 0
        while len(out) < len(self.jobs):
            out += [per_user[u][depth] for u in users if depth < len(per_user[u])]
            depth += 1
        return out

    def take(self, job_ids):
        users = list(dict.fromkeys(self.jobs[i].user_key for i in job_ids))
        for job_id in job_ids:
            del self.jobs[job_id]
        self.turn += 1
        for rank, user in enumerate(users):
            self.last_served[user] = (self.turn, rank)


@pytest.mark.parametrize("seed", range(5))
def test_positions_match_the_fair_order_through_random_changes(seed):
    rng = random.Random(seed)
    index, reference = WaitingIndex(), Reference()
    users = [f"web:u{i}" for i in range(12)]
    next_id = 1
    for _ in range(1500):
        action = rng.random()
        if action < 0.5 or not reference.jobs:
            job = entry(next_id, rng.choice(users))
            next_id += 1
            index.add(job)
            reference.jobs[job.id] = job
        elif action < 0.7:
            job_id = rng.choice(sorted(reference.jobs))
            assert index.remove(job_id) == reference.jobs.pop(job_id)
        else:  # a batch: the first job in order and a few others, as the scheduler may pick
            order = reference.order()
            picked = [order[0]] + rng.sample(order[1:], min(len(order) - 1, rng.randint(0, 3)))
            index.take([reference.jobs[i] for i in picked])
            reference.take(picked)
        expected = reference.order()
        assert [job.id for job in index.in_order()] == expected
        assert [index.position(job_id) for job_id in expected] == list(range(1, len(expected) + 1))
        assert len(index) == len(expected)


def test_a_job_given_back_takes_its_old_place_among_its_users_jobs():
    index = WaitingIndex([entry(1, "a"), entry(3, "a"), entry(2, "b")])
    index.remove(1)
    index.add(entry(1, "a"))
    assert [job.id for job in index.in_order()] == [1, 2, 3]


def test_what_the_scheduler_and_estimates_read():
    index = WaitingIndex([entry(1, "a", model="sd15", images=2, steps=20), entry(2, "b"), entry(3, "a")])
    assert [job.id for job in index.heads()] == [1, 2]
    assert index.oldest_not_of("sd15").id == 2 and index.oldest_not_of("demo").id == 1
    assert index.image_steps() == {"sd15": 40, "demo": 6}
    assert index.waiting_of("a") == 2 and index.waiting_of("nobody") == 0
    index.remove(1)
    assert index.oldest_not_of("demo") is None and index.image_steps() == {"demo": 6}
    assert index.position(1) is None and index.remove(1) is None
