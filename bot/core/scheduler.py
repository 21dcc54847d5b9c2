"""Which waiting jobs run next: fair between users, kind to the loaded model, batched.

Policy over the `WaitingIndex` (which keeps the fair order), so it is easy to test and the worker
stays simple. It looks at a bounded number of jobs, so picking costs the same however long the
queue is.

1. Fairness: users take turns. Each user's oldest job is their candidate; the user served least
   recently goes first, so someone with twenty jobs queued delays another user's single job by at
   most one batch.
2. Model affinity: switching models costs seconds, so a candidate for the model already loaded is
   preferred (among the next `LOOKAHEAD` users), but only while nobody waiting for another model
   has waited longer than `max_switch_wait` seconds; then the job that waited longest goes first.
3. Batching: jobs with the same batch key (model, size, steps, guidance, scheduler) join the lead
   job, in fair order among the next `LOOKAHEAD` waiting jobs, up to `max_batch` images.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice

from bot.core.jobs import QueuedJob
from bot.core.waiting import WaitingIndex

LOOKAHEAD = 256  # waiting jobs (or users) looked at for batch partners and model affinity


@dataclass
class Scheduler:
    max_batch: int = 4
    max_switch_wait: float = 60.0

    def pick(self, waiting: WaitingIndex, loaded_model: str | None, now: float) -> list[QueuedJob]:
        """The next batch to run (empty when nothing waits). Changes nothing: the worker calls
        `waiting.take(batch)` once it has claimed the jobs."""
        if not len(waiting):
            return []
        lead = self._lead(waiting, loaded_model, now)
        batch = [lead]
        room = self.max_batch - lead.images
        for job in islice(waiting.in_order(), LOOKAHEAD):
            if room <= 0:
                break
            if job.id != lead.id and job.batch_key == lead.batch_key and job.images <= room:
                batch.append(job)
                room -= job.images
        return batch

    def _lead(self, waiting: WaitingIndex, loaded_model: str | None, now: float) -> QueuedJob:
        first = next(waiting.heads())
        if loaded_model is None:
            return first
        starving = waiting.oldest_not_of(loaded_model)
        if starving is not None and now - starving.created_at > self.max_switch_wait:
            return starving
        for head in islice(waiting.heads(), LOOKAHEAD):
            if head.model == loaded_model:
                return head
        return first
