"""The web page in a real browser against a real `imagebot serve` process.

Playwright's sync API drives Debian's Chromium (never a downloaded one: no `playwright install`).
One server runs for the whole module (two tiny random-weight variants, `demo` and `other`); each
test opens a fresh browser context, so it is a new user (the page keeps a random id in
localStorage) with an empty history, unless the test is about what survives a reload.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import time
import urllib.error
import urllib.request

import pytest
from playwright.sync_api import expect
from tests.helpers.models import add_pipeline_variant

from tests.helpers.page import (
    ADMIN_TOKEN, DESCRIPTION, DESKTOP, EXAMPLES, REPO, Server, VARIANT_TOML, card_by_id, cards, job_id, load, new_card, new_context, open_advanced, open_menu, open_page, png_size, scroll_width, seeds, seen, show_admin, submit, wait_done,
)

pytestmark = pytest.mark.browser


def test_page_loads_without_errors(page):
    expect(page).to_have_title("Image Chatbot")
    expect(page.locator("h1")).to_have_text("Image Chatbot")
    for name, label in (("chat", "Chat"), ("gallery", "Gallery"), ("admin", "Admin")):
        expect(page.locator(f"#tab-{name}")).to_have_text(label)
    for name in ("chat", "gallery"):
        expect(page.locator(f"#tab-{name}")).to_be_visible()
    expect(page.locator("#tab-admin")).to_be_hidden()  # for admins only: a visitor has not entered the token
    expect(page.locator("#tab-chat")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#view-chat")).to_be_visible()
    expect(page.locator("#view-admin")).to_be_hidden()
    expect(page.locator('label[for="prompt"]')).to_have_text("Describe an image, or type a command")
    expect(page.locator("#prompt")).to_have_attribute("placeholder", re.compile("/help"))
    expect(page.locator("#send")).to_have_text("Generate")
    expect(page.locator("#form-error")).to_be_hidden()
    # options and models arrived
    expect(page.locator("#model option")).to_have_text(["default (demo)", "demo", "other"])
    expect(page.locator("#scheduler option").first).to_have_text("default (dpm++)")  # the model's own
    assert page.locator("#scheduler option").count() > 5
    assert page.evaluate("localStorage.getItem('imagebot.user')").startswith("browser-")
    page.wait_for_timeout(300)  # let late errors surface
    assert page.errors.console == []
    assert page.errors.page == []


def test_submit_with_enter_shows_progress_then_images(page):
    card = submit(page, "a red fox --seed 3 --n 2 --steps 3")
    expect(card.locator(".bubble.user")).to_have_text(re.compile(r"^a red fox\s+—\s+64x64, demo$"))
    sizes = wait_done(page, card, images=2)
    assert sizes == [(64, 64), (64, 64)]
    statuses = seen(page, card)["statuses"]
    assert re.fullmatch(r"Queued #\d+( · about \d+ s)?", statuses[0]), statuses
    assert statuses[-1] == "Done", statuses
    assert seeds(card) == [3, 4]
    for src in card.locator(".images img").evaluate_all("imgs => imgs.map(i => i.src)"):
        response = page.request.get(src)
        assert response.status == 200
        assert response.headers["content-type"] == "image/png"
        assert png_size(response.body()) == (64, 64)
    expect(card.locator(".bar")).to_be_hidden()
    expect(card.locator('[data-action="cancel"]')).to_have_count(0)
    # one compact row: U1 U2 V1 V2 Reroll and a menu for the rest
    expect(card.locator('.actions [data-action="upscale"]')).to_have_text(["U1", "U2"])
    expect(card.locator('.actions [data-action="variation"]')).to_have_text(["V1", "V2"])
    expect(card.locator('.actions [data-action="reroll"]')).to_be_visible()
    menu = open_menu(card)
    downloads = menu.locator("a[download]")
    expect(downloads).to_have_text(["Download image 1", "Download image 2"])
    assert downloads.evaluate_all("links => links.map(a => a.getAttribute('href'))") == \
        card.locator(".images img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")
    for action in ("copy-seed", "reuse", "copy-params"):
        expect(menu.locator(f'[data-action="{action}"]')).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("")
    assert page.errors.page == []


def test_progress_bar_and_preview(page):
    card = submit(page, "a long walk --steps 40")
    wait_done(page, card, images=1)
    record = seen(page, card)
    assert record["maxBar"] > 0, record
    assert any(re.fullmatch(r"Step \d+ of 40", status) for status in record["statuses"]), record
    assert record["statuses"][-1] == "Done"
    assert record["previewShown"], record
    assert record["previewLoaded"], record
    expect(card.locator("img.preview")).to_be_hidden()  # gone once the images are there
    assert page.errors.page == []


def test_reroll_and_copy_buttons(page, context):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    first = submit(page, "a red fox --seed 3 --steps 3")
    wait_done(page, first, images=1)
    assert seeds(first) == [3]
    menu = open_menu(first)
    copy_seed = menu.locator('[data-action="copy-seed"]')
    copy_seed.click()
    expect(copy_seed).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "3"
    expect(copy_seed).to_have_text("Copy seed 3")
    menu.locator('[data-action="copy-params"]').click()
    expect(first.locator('[data-action="copy-params"]')).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == (
        "a red fox\nSteps: 3, Sampler: dpm++, CFG scale: 7, Seed: 3, Size: 64x64, Model: demo")
    second = new_card(page, lambda: first.locator('[data-action="reroll"]').click())
    expect(second.locator(".bubble.user")).to_have_text(re.compile(r"^a red fox\s+—\s+64x64, demo$"))
    wait_done(page, second, images=1)
    assert seeds(second) != [3]
    expect(first.locator(".images img")).to_have_count(1)  # the original stays as it was


def test_variation_and_upscale(page):
    source = submit(page, "a lighthouse --seed 5 --steps 3")
    wait_done(page, source, images=1)
    variation = new_card(page, lambda: source.locator('[data-action="variation"]').click())
    expect(variation.locator(".bubble.user")).to_contain_text("(variation)")
    upscale = new_card(page, lambda: source.locator('[data-action="upscale"]').click())
    expect(upscale.locator(".bubble.user")).to_contain_text("(upscale)")
    expect(upscale.locator(".bubble.user")).to_contain_text("128x128")
    assert wait_done(page, variation, images=1) == [(64, 64)]
    assert wait_done(page, upscale, images=1) == [(128, 128)]
    src = upscale.locator(".images img").evaluate("i => i.src")
    assert png_size(page.request.get(src).body()) == (128, 128)
    expect(page.locator("#form-error")).to_be_hidden()


def test_cancel_a_queued_job(page, server):
    running = submit(page, "a slow one --steps 45 --n 4")
    expect(running.locator(".status")).to_have_text(re.compile(r"^(Starting…|Step \d+ of 45)$"))
    queued = submit(page, "a queued one --steps 3")
    expect(queued.locator(".status")).to_contain_text("Queued")
    queued.locator('[data-action="cancel"]').click()
    expect(queued.locator(".status")).to_have_text("Cancelled")
    expect(queued.locator('[data-action="cancel"]')).to_have_count(0)
    expect(queued.locator(".bar")).to_be_hidden()
    # progress re-renders the card several times a second; the Cancel button and the keyboard focus
    # on it must survive that, or a click landing between two renders is lost
    running_cancel = running.locator('[data-action="cancel"]')
    running_cancel.focus()
    handle = running_cancel.element_handle()
    step_now = running.locator(".status").inner_text()
    expect(running.locator(".status")).not_to_have_text(step_now)
    assert handle.evaluate("b => b.isConnected && document.activeElement === b")
    # stop the long one too (it is running: it stops at its next step)
    page.keyboard.press("Enter")
    expect(running.locator(".status")).to_have_text("Cancelled")
    expect(queued.locator(".images img")).to_have_count(0)
    expect(running.locator(".images img")).to_have_count(0)
    assert page.request.get(f"{server.url}/api/jobs/{job_id(queued)}").json()["status"] == "cancelled"
    assert "Done" not in seen(page, queued)["statuses"]
    expect(page.locator("#form-error")).to_be_hidden()
    assert page.errors.page == []


def test_bad_input(page):
    posts = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    log = page.locator("#log > li")
    error = page.locator("#form-error")
    # an empty prompt (or only spaces) sends nothing and says what to do; typing clears the message
    for text in ("", "   "):
        page.fill("#prompt", text)
        page.press("#prompt", "Enter")
        expect(error).to_have_text(f"The prompt is empty: describe the picture first, e.g. “{EXAMPLES[0]}”.")
        page.fill("#prompt", "a")
        expect(error).to_be_hidden()
        page.fill("#prompt", text)
        page.click("#send")
        expect(error).to_be_visible()
    page.fill("#prompt", "/imagine   ")
    page.press("#prompt", "Enter")
    expect(error).to_contain_text("The prompt is empty")
    expect(log).to_have_count(0)
    assert posts == []
    # out of range: the server's message, no card, the prompt kept for fixing
    page.fill("#prompt", "a cat --steps 500")
    page.press("#prompt", "Enter")
    expect(error).to_be_visible()
    expect(error).to_have_text("steps must be 1-50, got 500.")
    expect(log).to_have_count(0)
    expect(page.locator("#prompt")).to_have_value("a cat --steps 500")
    expect(page.locator("#send")).to_be_enabled()
    # an unknown command
    page.fill("#prompt", "/bogus")
    page.press("#prompt", "Enter")
    expect(error).to_have_text("Unknown command /bogus. Try /help.")
    expect(log).to_have_count(0)
    assert page.errors.page == []


def test_slash_commands(page):
    log = page.locator("#log > li")
    page.fill("#prompt", "/help")
    page.press("#prompt", "Enter")
    expect(log.last).to_contain_text("--ar")
    expect(log.last).to_contain_text("/imagine")
    expect(log.nth(0)).to_have_text("/help")  # the command is echoed
    page.fill("#prompt", "/model")
    page.press("#prompt", "Enter")
    expect(log.last).to_have_text(re.compile(r"^Models \(default: demo\): demo, other$"))
    card = submit(page, "/imagine a <b>boat</b> --steps 2")
    expect(card.locator(".bubble.user")).to_have_text(re.compile(r"^a <b>boat</b>\s+—"))  # text, not markup
    expect(card.locator(".bubble.user b")).to_have_count(0)
    wait_done(page, card, images=1)
    page.fill("#prompt", "/queue")
    page.press("#prompt", "Enter")
    expect(log.last).to_have_text("You have no jobs waiting.")
    expect(page.locator("#form-error")).to_be_hidden()
    assert page.errors.page == []


def test_advanced_panel_and_use_these_settings(page):
    open_advanced(page)
    page.fill("#steps", "3")
    page.fill("#seed", "7")
    page.fill("#size", "48x32")
    page.fill("#count", "1")
    page.fill("#prompt", "a small tree")
    card = new_card(page, lambda: page.click("#send"))
    expect(card.locator(".bubble.user")).to_have_text(re.compile(r"^a small tree\s+—\s+48x32, demo$"))
    assert wait_done(page, card, images=1) == [(48, 32)]
    assert seeds(card) == [7]
    # empty the form, then fill it back from the job
    for field in ("#steps", "#seed", "#size", "#count"):
        page.fill(field, "")
    page.click("#advanced-close")
    expect(page.locator("#advanced")).to_be_hidden()
    open_menu(card).locator('[data-action="reuse"]').click()
    expect(page.locator("#advanced")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("a small tree")
    expect(page.locator("#size")).to_have_value("48x32")
    expect(page.locator("#steps")).to_have_value("3")
    expect(page.locator("#seed")).to_have_value("7")
    expect(page.locator("#count")).to_have_value("1")
    expect(page.locator("#model")).to_have_value("demo")
    expect(page.locator("#prompt")).to_be_focused()
    assert page.errors.page == []


def test_history_survives_reload_and_restart(browser, server):
    context = new_context(browser)
    try:
        page = open_page(context, server)
        card = submit(page, "a lighthouse at dusk --steps 3 --n 2")
        wait_done(page, card, images=2)
        job = job_id(card)
        srcs = card.locator(".images img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")

        def still_there():
            again = card_by_id(page, job)
            expect(again).to_have_count(1)
            expect(again.locator(".bubble.user")).to_contain_text("a lighthouse at dusk")
            wait_done(page, again, images=2)
            assert again.locator(".images img").evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))") == srcs

        load(page, server)
        still_there()
        assert server.stop() == 0, server.tail()
        server.start()
        load(page, server)
        still_there()
        page.click("#tab-gallery")
        expect(page.locator("#view-gallery")).to_be_visible()
        expect(page.locator("#view-chat")).to_be_hidden()
        expect(page.locator("#gallery-empty")).to_be_hidden()
        gallery = page.locator("#gallery img")
        expect(gallery).to_have_count(2)
        assert sorted(gallery.evaluate_all("imgs => imgs.map(i => i.getAttribute('src'))")) == sorted(srcs)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth > 0)")
        assert page.errors.page == []
    finally:
        context.close()


LOCKED = "Locked: reloading models and changing the default model need the admin token (IMAGEBOT_ADMIN_TOKEN)."


def test_admin_default_model_and_reload(page, server, tiny_pipeline_dir):
    models = page.locator("#admin-models > li")
    message = page.locator("#admin-message")
    state = page.locator("#admin-state")
    token = page.locator("#admin-token")

    def model(name):
        return models.filter(has=page.locator("strong", has_text=re.compile(f"^{name}$")))

    expect(page.locator("#tab-admin")).to_be_hidden()  # a visitor's page has no Admin tab
    show_admin(page)
    expect(models.locator("strong")).to_have_text(["demo", "other"])
    expect(model("demo").locator(".tag")).to_contain_text("default")
    expect(model("demo").locator('[data-action="set-default"]')).to_have_count(0)
    try:
        # locked: it says so and why, and the actions cannot be pressed
        expect(state).to_have_text(LOCKED)
        expect(model("other").locator('[data-action="set-default"]')).to_be_disabled()
        expect(page.locator("#admin-reload")).to_be_disabled()
        # no token, then a wrong one: said so, still locked; typing again clears the complaint
        page.click("#admin-unlock")
        expect(state).to_have_text("Type the admin token first.")
        page.fill("#admin-token", "not-the-token")
        expect(state).to_have_text(LOCKED)
        page.click("#admin-unlock")
        expect(state).to_have_text("That token is wrong, so everything stays locked. "
                                   "Use the IMAGEBOT_ADMIN_TOKEN the server was started with.")
        expect(token).to_have_attribute("aria-invalid", "true")
        expect(model("other").locator('[data-action="set-default"]')).to_be_disabled()
        expect(page.locator("#admin-reload")).to_be_disabled()
        assert page.evaluate("sessionStorage.getItem('imagebot.admin')") is None  # a wrong token is not kept
        # the right token: unlocked, no complaint left
        page.fill("#admin-token", ADMIN_TOKEN)
        page.click("#admin-unlock")
        expect(state).to_have_text("Unlocked: you can reload models and change the default model.")
        expect(token).not_to_have_attribute("aria-invalid", "true")
        expect(message).to_have_text("")
        expect(page.locator("#admin-reload")).to_be_enabled()
        model("other").locator('[data-action="set-default"]').click()
        expect(model("other").locator('[data-action="set-default"]')).to_have_count(0)
        expect(model("other").locator(".tag")).to_contain_text("default")
        expect(model("demo").locator('[data-action="set-default"]')).to_have_count(1)
        expect(message).to_have_text("")
        # the next plain prompt uses it
        page.click("#tab-chat")
        expect(page.locator("#model option").first).to_have_text("default (other)")
        card = submit(page, "a plain prompt")
        expect(card.locator(".bubble.user")).to_have_text(re.compile(r", other$"))
        wait_done(page, card, images=1)
        # a variant copied into the model store meanwhile (variant.toml last), picked up by Reload
        # (copied after the tab has listed the models: listing also rescans, every 2 s at most)
        show_admin(page)
        expect(models.locator("strong")).to_have_text(["demo", "other"])
        add_pipeline_variant(server.models, "third", tiny_pipeline_dir, VARIANT_TOML)
        page.click("#admin-reload")
        expect(message).to_have_text("Added: third. Changed: none. Removed: none.")
        expect(models.locator("strong")).to_have_text(["demo", "other", "third"])
        # and back
        model("demo").locator('[data-action="set-default"]').click()
        expect(model("demo").locator(".tag")).to_contain_text("default")
        expect(model("other").locator('[data-action="set-default"]')).to_have_count(1)
        # Lock: locked again, its messages gone
        page.click("#admin-lock")
        expect(state).to_have_text(LOCKED)
        expect(message).to_have_text("")
        expect(page.locator("#admin-reload")).to_be_disabled()
        expect(model("other").locator('[data-action="set-default"]')).to_be_disabled()
    finally:
        server.put_default("demo")
    assert page.errors.page == []


def test_vietnamese(browser, server):
    context = new_context(browser, locale="vi-VN")
    try:
        page = open_page(context, server)
        expect(page.locator("html")).to_have_attribute("lang", "vi")
        expect(page.locator("#send")).to_have_text("Tạo ảnh")
        expect(page.locator("#tab-chat")).to_have_text("Trò chuyện")
        expect(page.locator("#tab-gallery")).to_have_text("Thư viện")
        expect(page.locator('label[for="prompt"]')).to_have_text("Mô tả bức ảnh, hoặc gõ một lệnh")
        page.fill("#prompt", "a cat --steps 500")
        page.press("#prompt", "Enter")
        expect(page.locator("#form-error")).to_have_text("steps phải trong khoảng 1-50, nhận được 500.")
        page.fill("#prompt", "/bogus")
        page.press("#prompt", "Enter")
        expect(page.locator("#form-error")).to_have_text("Không có lệnh /bogus. Thử /help.")
        expect(page.locator("#log > li")).to_have_count(0)
        assert page.errors.page == []
    finally:
        context.close()


def test_phone_viewport(browser, server):
    context = new_context(browser, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
                          device_scale_factor=2)
    try:
        page = open_page(context, server)

        def fits():
            assert scroll_width(page) <= 390
            for selector in ("#prompt", "#send"):
                expect(page.locator(selector)).to_be_visible()
                box = page.locator(selector).bounding_box()
                assert box["x"] >= 0 and box["x"] + box["width"] <= 390, (selector, box)

        fits()
        page.tap("#prompt")
        page.fill("#prompt", "a phone picture --steps 3")
        card = new_card(page, lambda: page.tap("#send"))
        wait_done(page, card, images=1)
        fits()
        page.tap("#advanced-toggle")
        expect(page.locator("#steps")).to_be_visible()
        fits()
        show_admin(page, tap=True)
        expect(page.locator("#admin-models > li")).not_to_have_count(0)
        assert scroll_width(page) <= 390
        assert page.errors.page == []
    finally:
        context.close()


def focus_by_keys(page, key: str, selector: str, most: int = 30) -> int:
    """Press `key` until the focused element matches `selector`; how many presses it took."""
    for presses in range(1, most + 1):
        page.keyboard.press(key)
        if page.evaluate("sel => document.activeElement.matches(sel)", selector):
            return presses
    pytest.fail(f"{key} never reached {selector}")


def test_keyboard_only(page):
    prompt = page.locator("#prompt")
    expect(prompt).to_be_focused()  # ready to type at once
    # the tabs: one stop in the Tab order, arrows move between them
    assert focus_by_keys(page, "Shift+Tab", "#tab-chat") == len(EXAMPLES) + 1
    page.keyboard.press("ArrowRight")
    expect(page.locator("#tab-gallery")).to_be_focused()
    expect(page.locator("#view-gallery")).to_be_visible()
    page.keyboard.press("ArrowRight")  # a visitor has no Admin tab: round to the chat
    expect(page.locator("#tab-chat")).to_be_focused()
    expect(page.locator("#view-chat")).to_be_visible()
    # the token goes in from Advanced settings > Admin sign-in
    focus_by_keys(page, "Tab", "#advanced-toggle")
    page.keyboard.press("Enter")
    focus_by_keys(page, "Tab", "#admin-entry")
    page.keyboard.press("Enter")
    expect(page.locator("#view-admin")).to_be_visible()
    expect(page.locator("#admin-token")).to_be_focused()
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    expect(page.locator("#admin-state")).to_contain_text("Unlocked")
    focus_by_keys(page, "Shift+Tab", "#tab-admin")
    page.keyboard.press("Home")
    expect(page.locator("#view-chat")).to_be_visible()
    # an example from the welcome screen, run with Enter
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text(EXAMPLES[0])
    first = new_card(page, lambda: page.keyboard.press("Enter"))
    wait_done(page, first, images=1)
    expect(prompt).to_be_focused()
    # a prompt of one's own, Shift+Enter for a new line
    page.keyboard.type("a keyboard fox")
    page.keyboard.press("Shift+Enter")  # a new line, not a submit
    page.keyboard.type("--steps 3 --n 2")
    expect(prompt).to_have_value("a keyboard fox\n--steps 3 --n 2")
    expect(cards(page)).to_have_count(1)
    card = new_card(page, lambda: page.keyboard.press("Enter"))
    expect(card.locator(".bubble.user")).to_contain_text("64x64, demo")
    wait_done(page, card, images=2)
    expect(prompt).to_be_focused()  # ready for the next prompt
    expect(prompt).to_have_value("")
    # back to the newest images; Enter opens the lightbox, arrows move, Escape closes
    selector = f'#log > li[data-job="{job_id(card)}"]'
    focus_by_keys(page, "Shift+Tab", f"{selector} .thumb:nth-child(2)")
    page.keyboard.press("Enter")
    expect(page.locator("#lightbox")).to_be_visible()
    expect(page.locator("#lb-close")).to_be_focused()
    expect(page.locator("#lightbox-title")).to_have_text("Image 3 of 3")
    page.keyboard.press("ArrowRight")
    expect(page.locator("#lightbox-title")).to_have_text("Image 1 of 3")
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    expect(page.locator("#lightbox-title")).to_have_text("Image 2 of 3")
    expect(page.locator("#lb-params")).to_contain_text(str(seeds(card)[0]))
    page.keyboard.press("Escape")
    expect(page.locator("#lightbox")).to_be_hidden()
    expect(page.locator(f"{selector} .thumb:nth-child(2)")).to_be_focused()
    # the "more" menu: Enter opens it on its first item, arrows move, Escape closes it
    focus_by_keys(page, "Tab", f'{selector} [data-action="more"]')
    page.keyboard.press("Enter")
    items = card.locator('[role="menuitem"]')
    expect(items.first).to_be_focused()
    expect(items.first).to_have_text("Download image 1")
    page.keyboard.press("ArrowDown")
    expect(items.nth(1)).to_be_focused()
    page.keyboard.press("End")
    expect(items.last).to_have_text("Open the grid")
    expect(items.last).to_be_focused()
    page.keyboard.press("Escape")
    expect(card.locator('[role="menu"]')).to_be_hidden()
    expect(card.locator('[data-action="more"]')).to_be_focused()
    # the settings drawer: Enter opens it, Escape closes it and gives the focus back
    focus_by_keys(page, "Tab", "#advanced-toggle")
    page.keyboard.press("Enter")
    expect(page.locator("#advanced")).to_be_visible()
    focus_by_keys(page, "Tab", "#steps")
    page.keyboard.type("2")
    page.keyboard.press("Escape")
    expect(page.locator("#advanced")).to_be_hidden()
    expect(page.locator("#advanced-toggle")).to_be_focused()
    expect(page.locator("#steps")).to_have_value("2")


def test_screenshot(page, tmp_path):
    card = submit(page, "a red fox in the snow --seed 42 --n 2 --steps 3")
    wait_done(page, card, images=2)
    page.evaluate("window.scrollTo(0, 0)")
    artifact = tmp_path / "screenshot.png"
    page.screenshot(path=str(artifact))
    artifacts = REPO / "test-artifacts"  # kept after the run (git ignores it); docs/ has the copy the README shows
    artifacts.mkdir(exist_ok=True)
    shutil.copyfile(artifact, artifacts / "screenshot.png")
    for path in (artifact, artifacts / "screenshot.png"):
        assert png_size(path.read_bytes()) == (DESKTOP["width"], DESKTOP["height"])


# --- regressions of bugs found earlier ------------------------------------------------------------


def test_use_these_settings_then_generate_with_any_guidance(page):
    card = submit(page, "a fox --cfg 7.2 --steps 2")
    wait_done(page, card, images=1)
    open_menu(card).locator('[data-action="reuse"]').click()
    expect(page.locator("#guidance")).to_have_value("7.2")
    page.click("#send")
    expect(cards(page)).to_have_count(2, timeout=5_000)


def test_invalid_value_in_collapsed_advanced_panel_is_reported(page):
    open_advanced(page)
    page.fill("#steps", "60")
    page.click("#advanced-toggle")
    expect(page.locator("#advanced")).to_be_hidden()
    page.fill("#prompt", "a fox")
    page.press("#prompt", "Enter")
    page.wait_for_function(
        "() => !document.querySelector('#advanced').hidden || !document.querySelector('#form-error').hidden",
        timeout=5_000)


def test_copy_seed_clicked_twice_keeps_its_label(page, context):
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    card = submit(page, "a fox --seed 11 --steps 2")
    wait_done(page, card, images=1)
    button = open_menu(card).locator('[data-action="copy-seed"]')
    button.click()
    expect(button).to_have_text("Copied")
    button.click()
    expect(button).to_have_text("Copy seed 11", timeout=5_000)


def _call(server: Server, method: str, path: str, user: str, body: str | None = None):
    request = urllib.request.Request(server.url + path, method=method, data=body.encode() if body else None,
                                     headers={"X-Imagebot-User": user, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_models_api_offers_examples_and_the_callers_admin_state(server):
    def models(headers: dict[str, str]) -> dict:
        request = urllib.request.Request(server.url + "/api/models", headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    data = models({})
    demo = next(model for model in data["models"] if model["name"] == "demo")
    assert (demo["description"], demo["examples"]) == (DESCRIPTION, EXAMPLES)
    assert data["admin"] == {"enabled": True, "unlocked": False}
    assert models({"Authorization": "Bearer wrong"})["admin"] == {"enabled": True, "unlocked": False}
    assert models({"Authorization": f"Bearer {ADMIN_TOKEN}"})["admin"] == {"enabled": True, "unlocked": True}


def test_event_stream_outlives_a_keep_alive(server):
    user = "sse-tester-0123456789"
    # Long enough to outlast the 15 s keep-alive on a fast CPU; it is cancelled at the end.
    ahead = _call(server, "POST", "/api/jobs", user, '{"prompt": "a long one ahead --steps 50 --n 4 --size 512x512"}')
    waiting = None
    try:
        deadline = time.monotonic() + 60
        while _call(server, "GET", f"/api/jobs/{ahead['id']}", user)["status"] != "running":
            assert time.monotonic() < deadline, "the job ahead never started"
            time.sleep(0.2)
        waiting = _call(server, "POST", "/api/jobs", user, '{"prompt": "a waiting one --steps 2"}')
        request = urllib.request.Request(f"{server.url}/api/jobs/{waiting['id']}/events",
                                         headers={"X-Imagebot-User": user})
        with urllib.request.urlopen(request, timeout=60) as stream:
            events = []
            for raw in stream:
                line = raw.decode().strip()
                if line.startswith("event: ") and line != "event: state":
                    events.append(line)
                if line == ": keep-alive":
                    break
            else:
                pytest.fail("the stream ended before its first keep-alive")
            if events:
                pytest.skip(f"the job ahead finished too early to test a keep-alive: {events}")
            _call(server, "DELETE", f"/api/jobs/{waiting['id']}", user)
            try:
                rest = [raw.decode().strip() for raw in stream]
            except (http.client.IncompleteRead, OSError) as error:
                pytest.fail(f"the stream broke after its keep-alive: {error!r}")
            assert "event: cancelled" in rest, rest
    finally:
        for job in (waiting, ahead):
            if job is not None:
                try:
                    _call(server, "DELETE", f"/api/jobs/{job['id']}", user)
                except urllib.error.HTTPError:
                    pass  # already finished
        deadline = time.monotonic() + 60
        while (_call(server, "GET", f"/api/jobs/{ahead['id']}", user)["status"] in ("queued", "running")
               and time.monotonic() < deadline):
            time.sleep(0.2)


def test_grid_link_and_model_command_for_admins(page, server):
    card = submit(page, "a fox --n 2 --steps 2")
    wait_done(page, card, images=2)
    expect(card.locator(".grid-link")).to_have_attribute("href", re.compile(r"^/api/images/[0-9a-f]{24}-grid\.png$"))
    single = submit(page, "a fox --steps 2")
    wait_done(page, single, images=1)
    expect(single.locator(".grid-link")).to_have_count(0)

    # Without the admin token, /model NAME explains how; with it, /model NAME sets the default.
    page.fill("#prompt", "/model other")
    page.press("#prompt", "Enter")
    expect(page.locator(".bubble.bot").last).to_contain_text("admin token")
    show_admin(page)
    page.fill("#admin-token", ADMIN_TOKEN)
    page.click("#admin-login button[type=submit]")
    page.click("#tab-chat")
    try:
        page.fill("#prompt", "/model other")
        page.press("#prompt", "Enter")
        expect(page.locator(".bubble.bot").last).to_have_text("The default model is now other.")
        expect(page.locator("#model option").first).to_have_text("default (other)")
    finally:
        page.fill("#prompt", "/model demo")
        page.press("#prompt", "Enter")
        expect(page.locator(".bubble.bot").last).to_have_text("The default model is now demo.")
