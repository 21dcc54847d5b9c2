"""The page offers what the current model and this server can do, and says it in plain words: fast
mode only for a model that has one, Describe off with a reason where no captioning model is set up,
/help with values the model accepts, the Admin tab for admins, a compact attachment chip, cards
that say what a job is, and buttons that name what they do."""

from __future__ import annotations

import io

import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.helpers.page import (ADMIN_TOKEN, VARIANT_TOML, new_context, open_advanced, open_page, serving, submit,
                                wait_done)

pytestmark = pytest.mark.browser

PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True}
FAST_TOML = VARIANT_TOML.replace("steps = 3\n", "steps = 3\nfast_steps = 2\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_pipeline_dir):
    """The demo model (no fast mode) as the default, and "quick", one with a fast mode."""
    with serving(tmp_path_factory.mktemp("newcomer"), tiny_pipeline_dir,
                 {"demo": VARIANT_TOML, "quick": FAST_TOML}) as srv:
        yield srv


def picture(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(out, format="PNG")
    return out.getvalue()


def attach(page, width: int, height: int, name: str = "holiday.png") -> None:
    page.set_input_files("#image-file", files=[{"name": name, "mimeType": "image/png",
                                                "buffer": picture(width, height)}])
    expect(page.locator("#attachment-status")).to_have_text(f"Starting from your image ({width}x{height})")


def unlock_admin(page) -> None:
    """Enter the admin token the discreet way: Advanced settings > Admin sign-in."""
    open_advanced(page)
    page.click("#admin-entry")
    expect(page.locator("#view-admin")).to_be_visible()
    page.fill("#admin-token", ADMIN_TOKEN)
    page.click("#admin-unlock")
    expect(page.locator("#admin-state")).to_have_attribute("data-state", "unlocked")


def test_fast_mode_is_offered_only_for_a_model_that_has_one(page):
    open_advanced(page)
    expect(page.locator("#fast")).to_be_hidden()  # the default model, demo, has no fast mode
    page.select_option("#model", "quick")
    expect(page.locator("#fast")).to_be_visible()
    page.check("#fast")
    # the checkbox sits beside its label, not above it
    box = page.locator("#fast").bounding_box()
    label = page.locator("#fast-field span").bounding_box()
    assert box["x"] + box["width"] <= label["x"] + 1
    assert label["y"] <= box["y"] + box["height"] / 2 <= label["y"] + label["height"]
    page.select_option("#model", "demo")
    expect(page.locator("#fast")).to_be_hidden()
    expect(page.locator("#fast")).not_to_be_checked()  # a hidden box sends nothing
    assert page.errors.page == []


def test_describe_is_off_with_a_plain_reason_and_only_an_admin_reads_how_to_set_it_up(page):
    attach(page, 64, 64)
    page.click("#attachment-options")
    expect(page.locator("#describe-image")).to_be_disabled()
    note = page.locator("#describe-note")
    expect(note).to_have_text("Describe is not set up on this server.")
    for admin_words in ("huggingface-cli", "config.toml"):
        expect(note).not_to_contain_text(admin_words)
    page.click("#attachment-remove")
    unlock_admin(page)
    page.click("#tab-chat")
    attach(page, 64, 64)
    page.click("#attachment-options")
    expect(page.locator("#describe-note")).to_contain_text("huggingface-cli download")
    expect(page.locator("#describe-note")).to_contain_text('[describe] model = "models/blip-base"')
    assert page.errors.page == []


def test_help_suggests_only_flags_and_values_the_model_accepts(page):
    defaults = page.evaluate("fetch('/api/models').then(r => r.json())")["models"][0]["defaults"]
    page.fill("#prompt", "/help")
    page.press("#prompt", "Enter")
    answer = page.locator("#log > li").last
    expect(answer).to_contain_text(f"--size {defaults['width']}x{defaults['height']}")
    expect(answer).to_contain_text(f"--steps {defaults['steps']}")
    text = answer.text_content()
    assert "768x512" not in text and "--refiner" not in text and "--fast" not in text, text
    page.click("#advanced-toggle")
    page.select_option("#model", "quick")  # a model with a fast mode: /help offers it
    page.fill("#prompt", "/help")
    page.press("#prompt", "Enter")
    expect(page.locator("#log > li").last).to_contain_text("--fast")


def test_the_admin_tab_is_there_only_once_the_admin_token_works(page, server):
    expect(page.locator("#tab-admin")).to_be_hidden()
    open_advanced(page)
    page.click("#admin-entry")
    expect(page.locator("#tab-admin")).to_be_visible()  # while it is shown
    page.fill("#admin-token", "not-the-token-at-all")
    page.click("#admin-unlock")
    expect(page.locator("#admin-state")).to_have_attribute("data-state", "wrong")
    page.click("#tab-chat")
    expect(page.locator("#tab-admin")).to_be_hidden()
    unlock_admin(page)
    page.click("#tab-chat")
    expect(page.locator("#tab-admin")).to_be_visible()
    expect(page.locator("#admin-entry")).to_be_hidden()
    page.reload()
    page.wait_for_selector("body[data-ready=true]", state="attached")
    expect(page.locator("#tab-admin")).to_be_visible()  # the token is kept for the session
    page.click("#tab-admin")
    page.click("#admin-lock")
    page.click("#tab-chat")
    expect(page.locator("#tab-admin")).to_be_hidden()
    assert page.errors.page == []


def test_an_attachment_is_one_small_chip_on_a_phone(browser, server):
    context = new_context(browser, **PHONE)
    try:
        page = open_page(context, server)
        attach(page, 320, 240)
        chip = page.locator("#attachment .chip")
        expect(chip).to_be_visible()
        expect(page.locator("#attachment-name")).to_have_text("holiday.png")
        expect(page.locator("#attachment-thumb")).to_be_visible()
        expect(page.locator("#strength")).to_be_hidden()
        composer = page.locator("#composer").bounding_box()
        assert composer["height"] < 0.4 * 844, composer
        assert chip.bounding_box()["height"] < 60
        page.click("#attachment-options")  # strength and the mask editor open over the chat
        expect(page.locator("#strength")).to_be_visible()
        expect(page.locator("#vary-region")).to_be_visible()
        assert page.locator("#composer").bounding_box()["height"] < 0.4 * 844
        page.click("#attachment-panel-close")
        expect(page.locator("#strength")).to_be_hidden()
        assert page.errors.page == []
    finally:
        context.close()


def test_the_advanced_sheet_on_a_phone_keeps_its_head_in_view(browser, server):
    context = new_context(browser, **PHONE)
    try:
        page = open_page(context, server)
        open_advanced(page)
        page.select_option("#model", "quick")
        page.locator("#advanced .drawer-body").evaluate("body => body.scrollTop = body.scrollHeight")
        drawer = page.locator("#advanced").bounding_box()
        for head in ("#advanced-clear", "#advanced-close"):
            box = page.locator(head).bounding_box()
            assert drawer["y"] <= box["y"] and box["y"] + box["height"] <= 844, (head, box, drawer)
        expect(page.locator("#fast")).to_be_in_viewport()
        box = page.locator("#fast").bounding_box()
        label = page.locator("#fast-field span").bounding_box()
        assert box["x"] + box["width"] <= label["x"] + 1
        assert label["y"] <= box["y"] + box["height"] / 2 <= label["y"] + label["height"]
    finally:
        context.close()


def test_a_vary_region_card_says_so_and_at_what_size_it_was_drawn(page):
    # a 320x240 picture: the demo model cannot draw 4:3 exactly, and the card says at what size it drew
    attach(page, 320, 240)
    page.click("#attachment-options")
    page.click("#vary-region")
    canvas = page.locator("#mask-canvas")
    box = canvas.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 3 / 4, y, steps=6)
    page.mouse.up()
    page.fill("#strength", "0.9")  # a strong change: still a region, not a "variation"
    card = submit(page, "a cat --steps 2 --seed 5")
    job = page.evaluate("id => fetch(`/api/jobs/${id}`).then(r => r.json())", card.get_attribute("data-job"))
    width, height = job["request"]["width"], job["request"]["height"]
    assert (width, height) != (320, 240) and job["request"]["mask_image"]
    expect(card.locator(".bubble.user")).to_contain_text("(vary region)")
    expect(card.locator(".note")).to_have_text(f"drawn at {width}x{height}, the model's size for this shape")
    wait_done(page, card, images=1)
    expect(card.locator(".bubble.user")).not_to_contain_text("(variation)")
    expect(card.locator(".note")).to_be_visible()
    assert page.errors.page == []


def test_result_buttons_name_what_they_do_and_a_finished_preview_is_not_asked_for(page):
    card = submit(page, "a dog --steps 2 --n 2 --seed 3")
    wait_done(page, card, images=2)
    expect(card.locator(".note")).to_be_hidden()
    # after the job, its preview is not asked for again, and one asked for late is no error
    assert card.locator("img.preview").get_attribute("src") is None
    page.evaluate("""id => new Promise((done) => {
        const img = new Image();
        img.onload = img.onerror = done;
        img.src = `/api/jobs/${id}/preview?step=1`;
    })""", card.get_attribute("data-job"))
    for n in (1, 2):
        upscale = card.get_by_role("button", name=f"Upscale image {n}")
        vary = card.get_by_role("button", name=f"Vary image {n}")
        expect(upscale).to_have_text(f"U{n}")
        expect(upscale).to_have_attribute("title", f"Upscale image {n} (2x)")
        expect(vary).to_have_text(f"V{n}")
        expect(vary).to_have_attribute("title", f"Vary image {n} (strong)")
    page.wait_for_timeout(300)
    assert page.errors.page == [] and not [e for e in page.errors.console if "404" in e], page.errors.console
