"""Telling waiting jobs where they are in the queue, often enough and not too often.

A job followed on its own (an API client) or with all its user's jobs (a web page) hears every
change of its position; a chat frontend, which
follows its whole platform and edits one message per job, hears it once the job has moved up by a
tenth since it last heard, and at every step of the last `CLOSE` places, so a job hears O(log n)
times in all however long the queue. Everything is read from memory (the queue index and the
event bus's followers), nothing from the store.
"""

from __future__ import annotations

from bot.core.events import EventBus
from bot.core.waiting import WaitingIndex

CLOSE = 10  # the last places before a job runs: every change is announced


class PositionAnnouncer:
    def __init__(self, waiting: WaitingIndex, events: EventBus) -> None:
        self.waiting = waiting
        self.events = events
        self._announced: dict[int, int] = {}  # waiting job -> the position it was last told

    def told(self, job_id: int, position: int) -> None:
        """The job's follower already knows this position (it was in the "queued" answer)."""
        self._announced[job_id] = position

    def announce(self) -> None:
        """Tell waiting jobs their new position (after a batch): walks the queue once, in memory,
        and only where someone follows a whole platform or a user's jobs."""
        platforms = self.events.platforms_followed()
        users = self.events.users_followed()
        announced: dict[int, int] = {}
        if platforms or users:
            entries = ((job, index) for index, job in enumerate(self.waiting.in_order(), start=1))
        else:
            entries = ((job, self.waiting.position(job_id)) for job_id in self.events.jobs_followed()
                       if (job := self.waiting.get(job_id)) is not None)
        for job, position in entries:
            platform = job.user_key.split(":", 1)[0]
            if not self.events.watching(job.id, platform, job.user_key):
                continue
            told = self._announced.get(job.id)
            alone = self.events.watching(job.id) or job.user_key in users
            if told is not None and not _worth_telling(position, told, alone):
                announced[job.id] = told
                continue
            announced[job.id] = position
            self.events.publish({"type": "position", "job": job.id, "position": position}, platform, job.user_key)
        self._announced = announced


def _worth_telling(position: int, told: int, followed_alone: bool) -> bool:
    if position == told:
        return False
    return followed_alone or position <= CLOSE or position <= told * 0.9
