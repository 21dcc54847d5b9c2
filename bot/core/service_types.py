"""The values the service takes and hands back to frontends (bot/core/service.py re-exports them)."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core.jobs import Job
from bot.core.request import GenerationRequest

JobRef = int | str  # a job's public id (str), or its internal id (int) inside the process


@dataclass(frozen=True)
class Submitted:
    job_id: int  # internal
    public_id: str
    position: int  # 1 = next to run
    eta_seconds: float | None
    request: GenerationRequest


@dataclass(frozen=True)
class JobView:
    job: Job
    position: int | None  # None once started or finished
    eta_seconds: float | None
    step: int | None = None  # progress of a running job
    total: int | None = None


@dataclass(frozen=True)
class Health:
    ok: bool
    problems: tuple[str, ...]
