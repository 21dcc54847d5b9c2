"""The waiting jobs in memory, in the scheduler's fair order, so nothing scans the queue.

SQLite stays the truth: this index is rebuilt from the `queued` rows at start and kept in step
by the service (a job enters when it is queued or given back, leaves when it is claimed or
cancelled). Every operation costs about the same with 10,000 jobs waiting as with 10.

Fair order: users take turns (round-robin), each user's jobs oldest first; the user served least
recently goes first (someone never served before anyone served). Round d holds the d-th job
(from 0) of every user who has more than d jobs waiting, users in rota order. So the position of
a user's d-th job is

    (jobs in the rounds before d) + (users ahead in the rota with more than d jobs) + 1

The first term is a prefix sum over "users with more than k jobs" (a Fenwick tree over k); the
second a binary search in the sorted rota keys of the users with more than d jobs (one sorted list
per depth, `_rounds[d]`).
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from typing import Iterable, Iterator

from bot.core.jobs import QueuedJob

# A user's place in the rota: (turn when last served, 0 if never; a tie-break; the user key).
# Never-served users tie-break by the id of the job that brought them in, served ones by the
# order in which they were served, so keys are unique and sort in serving order.
RotaKey = tuple[int, int, str]


class _PrefixSums:
    """A Fenwick tree: add to one slot, sum the slots before an index, both O(log n)."""

    def __init__(self) -> None:
        self._tree = [0]

    def add(self, index: int, delta: int) -> None:
        while len(self._tree) <= index + 1:  # grow by doubling; the tree stays valid when resized
            self._grow()
        i = index + 1
        while i < len(self._tree):
            self._tree[i] += delta
            i += i & -i

    def before(self, index: int) -> int:
        """The sum of slots 0 .. index-1."""
        total, i = 0, min(index, len(self._tree) - 1)
        while i > 0:
            total += self._tree[i]
            i -= i & -i
        return total

    def _grow(self) -> None:
        values = [self.before(i + 1) - self.before(i) for i in range(len(self._tree) - 1)]
        size = max(2, 2 * len(self._tree))
        self._tree = [0] * size
        for index, value in enumerate(values):
            if value:
                self.add(index, value)


class WaitingIndex:
    def __init__(self, jobs: Iterable[QueuedJob] = ()) -> None:
        self._jobs: dict[int, QueuedJob] = {}
        self._of_user: dict[str, list[int]] = {}  # a user's waiting job ids, oldest first
        self._rota: dict[str, RotaKey] = {}  # the users with jobs waiting
        self._served: dict[str, RotaKey] = {}  # where users stood when last served (also once they left)
        self._rounds: list[list[RotaKey]] = []  # _rounds[d]: sorted keys of users with more than d jobs
        self._round_sizes = _PrefixSums()
        self._of_model: dict[str, list[int]] = defaultdict(list)  # waiting ids per model, oldest first
        self._image_steps: dict[str, int] = defaultdict(int)  # per model: sum of images x steps waiting
        self._turn = 0
        self._serial = itertools.count(1)
        for job in jobs:
            self.add(job)

    # --- what is waiting -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._jobs)

    def __contains__(self, job_id: int) -> bool:
        return job_id in self._jobs

    def get(self, job_id: int) -> QueuedJob | None:
        return self._jobs.get(job_id)

    def waiting_of(self, user_key: str) -> int:
        return len(self._of_user.get(user_key, ()))

    def image_steps(self) -> dict[str, int]:
        """Per model, the images x steps of every waiting job (for time estimates)."""
        return {model: total for model, total in self._image_steps.items() if total}

    # --- changes -----------------------------------------------------------------------------------

    def add(self, job: QueuedJob) -> None:
        """A job joins the queue (new, or given back by the worker)."""
        if job.id in self._jobs:
            return
        self._jobs[job.id] = job
        ids = self._of_user.setdefault(job.user_key, [])
        if not ids:
            self._rota[job.user_key] = self._served.get(job.user_key) or (0, job.id, job.user_key)
        bisect.insort(ids, job.id)
        self._enter_round(len(ids) - 1, self._rota[job.user_key])
        bisect.insort(self._of_model[job.model], job.id)
        self._image_steps[job.model] += job.images * job.steps

    def remove(self, job_id: int) -> QueuedJob | None:
        """A job leaves the queue (claimed or cancelled); None if it was not waiting."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return None
        ids = self._of_user[job.user_key]
        del ids[bisect.bisect_left(ids, job_id)]
        key = self._rota[job.user_key]
        self._leave_round(len(ids), key)  # the user now has one round fewer
        if not ids:
            del self._of_user[job.user_key], self._rota[job.user_key]
        same_model = self._of_model[job.model]
        del same_model[bisect.bisect_left(same_model, job_id)]
        if not same_model:
            del self._of_model[job.model]
        self._image_steps[job.model] -= job.images * job.steps
        if not self._image_steps[job.model]:
            del self._image_steps[job.model]
        return job

    def take(self, jobs: Iterable[QueuedJob]) -> None:
        """A batch starts: its jobs leave the queue and their users go to the back of the rota."""
        jobs = list(jobs)
        for job in jobs:
            self.remove(job.id)
        self._turn += 1
        for user in dict.fromkeys(job.user_key for job in jobs):
            key = (self._turn, next(self._serial), user)
            self._served[user] = key
            old = self._rota.get(user)
            if old is not None:
                for depth in range(len(self._of_user[user])):
                    self._move_in_round(depth, old, key)
                self._rota[user] = key

    # --- order -------------------------------------------------------------------------------------

    def position(self, job_id: int) -> int | None:
        """1 = runs next if nothing else arrives; None if the job is not waiting."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        depth = bisect.bisect_left(self._of_user[job.user_key], job_id)
        ahead_in_round = bisect.bisect_left(self._rounds[depth], self._rota[job.user_key])
        return self._round_sizes.before(depth) + ahead_in_round + 1

    def in_order(self) -> Iterator[QueuedJob]:
        """The waiting jobs in fair order, lazily: take only as many as you need (and change
        nothing in the queue until you are done with it)."""
        for depth, keys in enumerate(self._rounds):
            for key in keys:
                ids = self._of_user.get(key[2])
                if ids is not None and depth < len(ids):
                    yield self._jobs[ids[depth]]

    def heads(self) -> Iterator[QueuedJob]:
        """Each user's oldest job, in rota order (lazily, as `in_order`)."""
        for key in self._rounds[0] if self._rounds else ():
            yield self._jobs[self._of_user[key[2]][0]]

    def oldest_not_of(self, model: str) -> QueuedJob | None:
        """The job that has waited longest for a model other than `model` (models are few)."""
        oldest = min((ids[0] for name, ids in self._of_model.items() if name != model and ids), default=None)
        return None if oldest is None else self._jobs[oldest]

    # --- the per-depth rounds ------------------------------------------------------------------------

    def _enter_round(self, depth: int, key: RotaKey) -> None:
        while len(self._rounds) <= depth:
            self._rounds.append([])
        bisect.insort(self._rounds[depth], key)
        self._round_sizes.add(depth, 1)

    def _leave_round(self, depth: int, key: RotaKey) -> None:
        keys = self._rounds[depth]
        del keys[bisect.bisect_left(keys, key)]
        self._round_sizes.add(depth, -1)
        while self._rounds and not self._rounds[-1]:
            self._rounds.pop()

    def _move_in_round(self, depth: int, old: RotaKey, new: RotaKey) -> None:
        keys = self._rounds[depth]
        del keys[bisect.bisect_left(keys, old)]
        bisect.insort(keys, new)
