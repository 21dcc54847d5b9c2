"""Which queued jobs run next: fair between users, kind to the loaded model, batched.

Pure logic over `QueuedJob`s, so it is easy to test and the worker stays simple.

1. Fairness: users take turns. Each user's oldest job is their candidate; the user served least
   recently goes first, so someone with twenty jobs queued delays another user's single job by at
   most one batch.
2. Model affinity: switching models costs seconds, so a candidate for the model already loaded is
   preferred, but only while nobody waiting for another model has waited longer than
   `max_switch_wait` seconds.
3. Batching: jobs with the same batch key (model, size, steps, guidance, scheduler) join the lead
   job, again taking turns between users, up to `max_batch` images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from bot.core.store import QueuedJob


@dataclass
class Scheduler:
    max_batch: int = 4
    max_switch_wait: float = 60.0
    _last_served: dict[str, float] = field(default_factory=dict)
    _turn: int = 0

    def pick(self, queued: Sequence[QueuedJob], loaded_model: str | None, now: float) -> list[QueuedJob]:
        """The next batch to run (empty when nothing is queued)."""
        if not queued:
            return []
        lead = self._lead(queued, loaded_model, now)
        batch = [lead]
        room = self.max_batch - lead.images
        for job in self._fair_order([j for j in queued if j.batch_key == lead.batch_key and j.id != lead.id]):
            if room <= 0:
                break
            if job.images <= room:
                batch.append(job)
                room -= job.images
        self._turn += 1
        for job in batch:
            self._last_served[job.user_key] = self._turn
        return batch

    def order(self, queued: Sequence[QueuedJob]) -> list[QueuedJob]:
        """The order in which jobs would be served if nothing else arrived (for positions)."""
        return self._fair_order(queued)

    def _lead(self, queued: Sequence[QueuedJob], loaded_model: str | None, now: float) -> QueuedJob:
        heads = self._heads(queued)
        if loaded_model is not None:
            starving = [job for job in heads if job.model != loaded_model and now - job.created_at > self.max_switch_wait]
            if not starving:
                same = [job for job in heads if job.model == loaded_model]
                if same:
                    return same[0]
            else:
                return min(starving, key=lambda job: job.created_at)
        return heads[0]

    def _heads(self, queued: Sequence[QueuedJob]) -> list[QueuedJob]:
        """Each user's oldest job, the least recently served user first."""
        heads: dict[str, QueuedJob] = {}
        for job in sorted(queued, key=lambda j: j.id):
            heads.setdefault(job.user_key, job)
        return sorted(heads.values(), key=lambda job: (self._last_served.get(job.user_key, 0), job.id))

    def _fair_order(self, queued: Sequence[QueuedJob]) -> list[QueuedJob]:
        """Round-robin over users (least recently served first), each user's jobs oldest first."""
        per_user: dict[str, list[QueuedJob]] = {}
        for job in sorted(queued, key=lambda j: j.id):
            per_user.setdefault(job.user_key, []).append(job)
        users = sorted(per_user, key=lambda user: (self._last_served.get(user, 0), per_user[user][0].id))
        ordered: list[QueuedJob] = []
        depth = 0
        while len(ordered) < len(queued):
            for user in users:
                if depth < len(per_user[user]):
                    ordered.append(per_user[user][depth])
            depth += 1
        return ordered
