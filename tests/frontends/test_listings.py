"""bot/frontends/listings.py: what /queue, /history and /model show, decided once for every chat."""

from __future__ import annotations

from bot.core.jobs import Job, ImageResult, Origin
from bot.core.request import GenerationRequest
from bot.core.service import JobView
from bot.frontends.listings import (BROKEN, DISABLED, RUNNING_STEPS, STARTING, USABLE, WAITING, ModelLine, QueuedLine,
                                    history_lines, model_lines, queue_lines, usable_names)

OWNER = Origin("telegram", "1")


def job(number: int, status: str, prompt: str = "a fox", images: tuple[ImageResult, ...] = ()) -> Job:
    return Job(number, status, GenerationRequest(prompt=prompt, negative_prompt="", model="demo", seed=1, steps=2,
                                                    guidance=7.0, width=64, height=64), OWNER, images=images,
               public_id=f"{number:06x}" + "0" * 18)


def variant(name: str, status: str = "ready", error: str | None = None, **rest) -> dict:
    return {"name": name, "status": status, "error": error, "description": rest.get("description", ""),
            "loaded": rest.get("loaded", False), "default": rest.get("default", False)}


def test_a_queued_job_is_waiting_whether_or_not_its_place_is_known():
    views = [JobView(job(1, "queued"), 2, 30.0), JobView(job(2, "queued"), 0, None),
             JobView(job(3, "queued"), None, None)]
    assert [(line.state, line.position) for line in queue_lines(views)] == [(WAITING, 2), (WAITING, None),
                                                                            (WAITING, None)]


def test_a_running_job_shows_its_steps_once_it_has_one():
    views = [JobView(job(1, "running"), None, 12.0, 3, 20), JobView(job(2, "running"), None, None),
             JobView(job(3, "running"), None, None, 0, 0)]
    assert queue_lines(views) == [
        QueuedLine("000001", "a fox", RUNNING_STEPS, step=3, total=20, eta_seconds=12.0),
        QueuedLine("000002", "a fox", STARTING),
        QueuedLine("000003", "a fox", STARTING)]


def test_the_queue_is_in_the_order_jobs_were_submitted():
    views = [JobView(job(7, "queued"), 1, None), JobView(job(3, "running"), None, None, 1, 2)]
    assert [line.job for line in queue_lines(views)] == ["000003", "000007"]


def test_history_lines_carry_status_model_and_seeds():
    (done, cancelled) = history_lines([job(2, "done", "a hare", (ImageResult("a.png", 5), ImageResult("b.png", 6))),
                                       job(1, "cancelled")])
    assert (done.job, done.status, done.prompt, done.model, done.seeds) == ("000002", "done", "a hare", "demo", (5, 6))
    assert (cancelled.status, cancelled.seeds) == ("cancelled", ())


def test_disabled_models_are_disabled_not_broken_and_errors_lose_their_paths():
    lines = model_lines([variant("demo", default=True, loaded=True, description="the demo"),
                         variant("off", "disabled"),
                         variant("cracked", "broken", "cannot read /srv/models/cracked/variant.toml")])
    assert lines == [ModelLine("demo", "the demo", USABLE, "", loaded=True, default=True),
                     ModelLine("off", "", DISABLED, "", loaded=False, default=False),
                     ModelLine("cracked", "", BROKEN, "cannot read variant.toml", loaded=False, default=False)]
    assert usable_names([variant("demo"), variant("off", "disabled"), variant("cracked", "broken", "x")]) == ["demo"]


def test_a_model_line_names_the_models_family_when_its_variant_can_be_read():
    flux = {**variant("flux"), "family": {"name": "flux1-dev", "label": "FLUX.1 [dev]"}}
    cracked = {**variant("cracked", "broken", "x"), "family": None}
    assert [line.family for line in model_lines([flux, cracked])] == ["FLUX.1 [dev]", ""]
