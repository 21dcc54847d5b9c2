"""The page follows the chosen model's family: a family without a negative prompt (FLUX.1) greys the
field out and says why, one without guidance (FLUX.1 schnell) its guidance, the scheduler list holds
only what the family draws with, and a typed size goes onto the family's grid. One server for the
module, on an SD 1.x model (the default) and tiny FLUX.1 dev and schnell variants."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from bot.frontends.web.strings import render
from bot.models.variant import SCHEDULERS
from tests.helpers.models import SMALL_DIT_TOML, add_pipeline_variant
from tests.helpers.page import (VARIANT_TOML, Server, job_id, new_context, open_advanced, open_page, submit,
                                wait_done)
from tests.helpers.ports import free_port

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_pipeline_dir, tiny_dit_dir):
    srv = Server(tmp_path_factory.mktemp("families-page"), free_port())
    srv.models.mkdir()
    add_pipeline_variant(srv.models, "demo", tiny_pipeline_dir, VARIANT_TOML)
    add_pipeline_variant(srv.models, "flux", tiny_dit_dir("flux1-dev"), SMALL_DIT_TOML)
    add_pipeline_variant(srv.models, "schnell", tiny_dit_dir("flux1-schnell"), SMALL_DIT_TOML)
    srv.write_config()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(timeout=30)


def scheduler_names(page) -> list[str]:
    return page.locator("#scheduler option").evaluate_all("options => options.map(o => o.value).filter(Boolean)")


def resize(page, typed: str) -> str:
    """Type a size and leave the field; what it then holds."""
    page.fill("#size", typed)
    page.press("#size", "Tab")
    return page.input_value("#size")


def test_switching_the_model_switches_the_controls(page):
    open_advanced(page)
    note = page.locator("#negative-note")
    expect(page.locator("#negative")).to_be_enabled()  # SD 1.x, the default
    expect(note).to_be_hidden()
    assert scheduler_names(page) == list(SCHEDULERS)
    page.fill("#negative", "blurry")

    page.select_option("#model", "flux")
    expect(page.locator("#negative")).to_be_disabled()
    expect(page.locator("#negative")).to_have_value("")
    expect(note).to_be_visible()
    expect(note).to_have_text(render("ui_negative_unavailable", "en", family="FLUX.1 [dev]"))
    expect(page.locator("#guidance")).to_be_enabled()  # its distilled guidance still counts
    expect(page.locator("#guidance")).to_have_attribute("placeholder", "3.5")
    assert scheduler_names(page) == ["euler"]
    expect(page.locator("#scheduler option").first).to_have_text("default (euler)")
    assert resize(page, "100x76") == "96x80"  # FLUX.1 sides are multiples of 16

    page.fill("#prompt", "/help")
    page.press("#prompt", "Enter")
    help_text = page.locator("#log > li").last
    expect(help_text).to_contain_text("--cfg 3.5")
    assert "--no " not in help_text.text_content() and "euler_a" not in help_text.text_content()

    # What is greyed out is not sent: the job draws, at the size on the family's grid.
    card = submit(page, "a red circle on a blue background --seed 2")
    assert wait_done(page, card, 1) == [(96, 80)]
    request = page.evaluate("id => fetch(`/api/jobs/${id}`).then(r => r.json())", job_id(card))["request"]
    assert (request["model"], request["negative_prompt"], request["guidance"]) == ("flux", "", 3.5)

    page.select_option("#model", "schnell")
    expect(page.locator("#guidance")).to_be_disabled()
    expect(page.locator("#guidance-note")).to_have_text(render("ui_guidance_unavailable", "en",
                                                               family="FLUX.1 [schnell]"))
    expect(note).to_have_text(render("ui_negative_unavailable", "en", family="FLUX.1 [schnell]"))

    page.select_option("#model", "demo")
    expect(page.locator("#negative")).to_be_enabled()
    expect(page.locator("#guidance")).to_be_enabled()
    expect(note).to_be_hidden()
    expect(page.locator("#guidance-note")).to_be_hidden()
    assert scheduler_names(page) == list(SCHEDULERS)
    assert resize(page, "90x70") == "88x72"  # SD: multiples of 8
    assert page.errors.page == [] and page.errors.console == []


def test_the_note_is_in_the_readers_language(browser, server):
    context = new_context(browser, locale="vi-VN")
    try:
        page = open_page(context, server)
        open_advanced(page)
        page.select_option("#model", "flux")
        expect(page.locator("#negative-note")).to_have_text(render("ui_negative_unavailable", "vi",
                                                                   family="FLUX.1 [dev]"))
    finally:
        context.close()
