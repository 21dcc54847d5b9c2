"""The page's Vary (Subtle), Vary (Strong) and Remix in a real browser: Remix fills the prompt box with the
image's prompt, and sending the edited prompt varies that image with it."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.helpers.page import new_card, submit, wait_done

pytestmark = pytest.mark.browser


def open_lightbox(page, card):
    card.locator(".thumb").first.click()
    expect(page.locator("#lightbox")).to_be_visible()


def test_subtle_strong_and_remix_from_the_lightbox(page):
    source = submit(page, "a lighthouse --seed 5 --steps 3")
    wait_done(page, source, images=1)

    open_lightbox(page, source)
    subtle = new_card(page, lambda: page.locator('#lb-actions [data-action="vary-subtle"]').click())
    expect(subtle.locator(".bubble.user")).to_contain_text("(subtle variation)")
    open_lightbox(page, source)
    strong = new_card(page, lambda: page.locator('#lb-actions [data-action="variation"]').click())
    expect(strong.locator(".bubble.user")).to_contain_text("(variation)")

    open_lightbox(page, source)
    page.locator('#lb-actions [data-action="remix"]').click()
    expect(page.locator("#lightbox")).to_be_hidden()
    expect(page.locator("#prompt")).to_have_value("a lighthouse")
    expect(page.locator("#remix")).to_contain_text("Remix of image 1")
    page.locator("#prompt").fill("a lighthouse at night")
    remix = new_card(page, lambda: page.keyboard.press("Enter"))
    expect(remix.locator(".bubble.user")).to_contain_text("a lighthouse at night")
    expect(remix.locator(".bubble.user")).to_contain_text("(remix)")
    expect(page.locator("#remix")).to_be_hidden()
    for card in (subtle, strong, remix):
        assert wait_done(page, card, images=1) == [(64, 64)]

    # Cancelled, the prompt box is an ordinary one again: the next prompt is a new image.
    open_lightbox(page, source)
    page.locator('#lb-actions [data-action="remix"]').click()
    page.locator("#remix-cancel").click()
    expect(page.locator("#remix")).to_be_hidden()
    page.locator("#prompt").fill("a fresh boat --steps 2")
    fresh = new_card(page, lambda: page.keyboard.press("Enter"))
    expect(fresh.locator(".bubble.user")).not_to_contain_text("(")
