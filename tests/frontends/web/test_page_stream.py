"""The page follows all its jobs on one event stream (GET /api/events): a dozen jobs queued at
once, more than a client may hold streams (`[web] max_streams_per_client`, 8), all show their
place, their progress and their images."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.helpers.page import VARIANT_TOML, cards, job_id, load, new_context, seen, serving, wait_done

pytestmark = pytest.mark.browser

JOBS = 12
STEPS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_pipeline_dir):
    """The page tests' server, with room for a dozen waiting jobs per user (10 by default)."""
    with serving(tmp_path_factory.mktemp("webstream"), tiny_pipeline_dir, {"demo": VARIANT_TOML},
                 queue=f"max_queued_per_user = {JOBS}\n") as srv:
        yield srv


def test_twelve_jobs_from_one_page_all_show_progress_and_results(browser, server):
    context = new_context(browser)
    streams: list[str] = []
    try:
        page = context.new_page()
        page.on("request", lambda request: streams.append(request.url) if "events" in request.url else None)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        load(page, server)
        before = cards(page).count()
        for n in range(JOBS):
            page.fill("#prompt", f"shape number {n} --steps {STEPS} --seed {n + 1}")
            page.press("#prompt", "Enter")
            expect(cards(page)).to_have_count(before + n + 1)
        new = [cards(page).nth(before + n) for n in range(JOBS)]
        for n, card in enumerate(new):
            expect(card.locator(".bubble.user")).to_contain_text(f"shape number {n}")
            wait_done(page, card, images=1)
        for card in new:
            record = seen(page, card)
            assert record["statuses"][-1] == "Done", record
            assert record["maxBar"] > 0 or any(re.fullmatch(rf"Step \d+ of {STEPS}", status)
                                               for status in record["statuses"]), record
        assert len({job_id(card) for card in new}) == JOBS
        assert [url for url in streams if url.endswith("/api/events")] == [f"{server.url}/api/events"], streams
        assert not [url for url in streams if "/api/jobs/" in url], streams  # no stream per job
        assert errors == []
    finally:
        context.close()


def test_a_job_queued_elsewhere_by_the_same_browser_appears_with_its_result(browser, server):
    """Two pages of one browser (one client key) share their jobs: the other page hears of a job it
    did not ask for on its stream and shows it, done."""
    context = new_context(browser)
    try:
        first, second = context.new_page(), context.new_page()
        load(first, server)
        load(second, server)
        before = cards(second).count()
        first.fill("#prompt", "asked on the other page --steps 2")
        first.press("#prompt", "Enter")
        expect(cards(second)).to_have_count(before + 1)
        card = cards(second).nth(before)
        expect(card.locator(".bubble.user")).to_contain_text("asked on the other page")
        wait_done(second, card, images=1)
    finally:
        context.close()
