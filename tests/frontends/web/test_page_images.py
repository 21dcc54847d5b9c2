"""Image prompts on the web page, in Chromium against a real `imagebot serve`: the file picker, a
mask painted with the mouse that limits what the job redraws, paste and drop, and "Vary region"
on a result."""

from __future__ import annotations

import io
import urllib.request

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.helpers.page import submit, wait_done

pytestmark = pytest.mark.browser


def source_png() -> tuple[np.ndarray, bytes]:
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    image.paste((30, 60, 220), (32, 0, 64, 64))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return np.asarray(image, dtype=float), out.getvalue()


def fetch_pixels(server, card) -> np.ndarray:
    url = card.locator(".images img").first.get_attribute("src")
    with urllib.request.urlopen(server.url + url, timeout=30) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"), dtype=float)


def test_a_picked_image_with_a_painted_mask_is_redrawn_only_there(page, server):
    source, data = source_png()
    page.set_input_files("#image-file", files=[{"name": "source.png", "mimeType": "image/png", "buffer": data}])
    expect(page.locator("#attachment")).to_be_visible()
    expect(page.locator("#attachment-status")).to_have_text("Starting from your image (64x64)")
    expect(page.locator("#image-button")).to_have_attribute("aria-pressed", "true")

    expect(page.locator("#strength")).to_be_hidden()  # behind the chip: the prompt box stays compact
    page.click("#attachment-options")
    page.click("#vary-region")
    canvas = page.locator("#mask-canvas")
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    y = box["y"] + box["height"] / 2  # a stroke across the middle, from a quarter to three quarters
    page.mouse.move(box["x"] + box["width"] / 4, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 3 / 4, y, steps=8)
    page.mouse.up()
    page.fill("#strength", "0.9")

    card = submit(page, "a cat --steps 2 --seed 5")
    expect(page.locator("#attachment")).to_be_hidden()  # the picture went with that job
    assert wait_done(page, card, images=1) == [(64, 64)]
    drawn = fetch_pixels(server, card)
    difference = np.abs(drawn - source).mean(axis=2)
    # The stroke is 8 px wide (an eighth of the picture) across rows 28-36, columns 12-52.
    assert difference[:20].max() <= 2 and difference[44:].max() <= 2  # untouched above and below
    assert difference[30:34, 24:40].mean() > 20  # redrawn where painted
    assert page.errors.page == []


def test_paste_and_drop_attach_a_picture_and_vary_region_opens_on_a_result(page, server):
    _, data = source_png()
    attach = """async ([bytes, kind]) => {
        const file = new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"});
        const transfer = new DataTransfer();
        transfer.items.add(file);
        if (kind === "paste") document.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer}));
        else document.querySelector("#view-chat").dispatchEvent(
            new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
    }"""
    page.evaluate(attach, [list(data), "paste"])
    expect(page.locator("#attachment-status")).to_have_text("Starting from your image (64x64)")
    page.click("#attachment-options")  # this server has no captioning model: Describe is off, and says why
    expect(page.locator("#describe-image")).to_be_disabled()
    expect(page.locator("#describe-note")).to_have_text("Describe is not set up on this server.")
    page.click("#attachment-remove")
    expect(page.locator("#attachment")).to_be_hidden()
    page.evaluate(attach, [list(data), "drop"])
    expect(page.locator("#attachment-status")).to_have_text("Starting from your image (64x64)")
    page.click("#attachment-remove")

    card = submit(page, "a boat --steps 1 --seed 2")
    wait_done(page, card, images=1)
    card.locator(".images img").first.click()
    expect(page.locator("#lightbox")).to_be_visible()
    page.locator('#lb-actions [data-action="vary-region"]').click()
    expect(page.locator("#lightbox")).to_be_hidden()
    expect(page.locator("#mask-canvas")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("a boat")
    expect(page.locator("#attachment-status")).to_have_text("Starting from your image (64x64)")
    assert page.errors.page == []
