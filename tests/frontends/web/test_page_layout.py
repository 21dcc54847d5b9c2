"""The page as a user sees it: real geometry in a real browser, on a laptop (1280x800) and a phone
(390x844), in English and Vietnamese.

"Visible" here means what a user can actually see and press: the element's box lies inside the
viewport and `document.elementFromPoint` at its centre (and, for a whole job card, near its four
corners) finds the element itself, not the pinned header, the pinned prompt box, a drawer or a
dialog over it. Nothing here measures time: every wait is for a state of the page.

The server and browser are test_page.py's (one `imagebot serve` for this module, two tiny
random-weight variants `demo` and `other` whose variant.toml lists example prompts).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import Error as PlaywrightError
from playwright.sync_api import expect

from tests.helpers.page import (
    ADMIN_TOKEN, DESCRIPTION, EXAMPLES, WAIT_MS, card_by_id, cards, job_id, load, new_card, new_context,
    open_page, scroll_width, seeds, show_admin,
)

pytestmark = pytest.mark.browser

VIEWS = {
    "desktop": {"viewport": {"width": 1280, "height": 800}},
    "phone": {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True,
              "device_scale_factor": 2},
}
LOCALES = {"en": "en-US", "vi": "vi-VN"}
BOTH = [("desktop", "en"), ("phone", "vi"), ("phone", "en"), ("desktop", "vi")]  # every screen in every language
SLOW = "a slow one --steps 50 --n 4 --size 128x128"  # keeps the single worker busy until cancelled

# Where an element is and whether a user can see it (see the module's docstring).
GEOMETRY = """([selector, corners]) => {
  const el = document.querySelector(selector);
  if (!el) return {ok: false, why: "no such element"};
  const r = el.getBoundingClientRect();
  const width = document.documentElement.clientWidth, height = window.innerHeight;
  const inside = r.width > 0 && r.height > 0 && r.left >= -0.5 && r.top >= -0.5
    && r.right <= width + 0.5 && r.bottom <= height + 0.5;
  const points = [[r.left + r.width / 2, r.top + r.height / 2]];
  if (corners) points.push([r.left + 3, r.top + 3], [r.right - 3, r.top + 3], [r.left + 3, r.bottom - 3],
                           [r.right - 3, r.bottom - 3]);
  const covered = [];
  for (const [x, y] of points) {
    const hit = document.elementFromPoint(x, y);
    if (!hit || !(hit === el || el.contains(hit))) {
      covered.push({x: Math.round(x), y: Math.round(y),
                    by: hit ? hit.tagName.toLowerCase() + (hit.id ? "#" + hit.id : "") +
                              (typeof hit.className === "string" && hit.className ? "." + hit.className : "") : null});
    }
  }
  return {ok: inside && covered.length === 0, inside, covered, viewport: [width, height],
          box: [r.left, r.top, r.right, r.bottom].map(Math.round)};
}"""


# --- helpers ---------------------------------------------------------------------------------------


class Texts:
    """The page's texts in one language, from the server's /api/messages (as the page gets them)."""

    def __init__(self, page, server, locale: str) -> None:
        self.texts = page.request.get(f"{server.url}/api/messages?locale={locale}").json()

    def __call__(self, key: str, **params) -> str:
        return self.texts[key].format(**params)


def open_view(browser, server, view: str, lang: str):
    context = new_context(browser, locale=LOCALES[lang], **VIEWS[view])
    page = open_page(context, server)
    page.view = view
    return context, page, Texts(page, server, LOCALES[lang])


def press(page, target) -> None:
    """Tap on a phone, click on a laptop."""
    locator = page.locator(target) if isinstance(target, str) else target
    if page.view == "phone":
        locator.tap()
    else:
        locator.click()


def geometry(page, selector: str, corners: bool = False) -> dict:
    return page.evaluate(GEOMETRY, [selector, corners])


def in_view(page, selector: str, corners: bool = False) -> None:
    """Wait until `selector` is inside the viewport and uncovered (all of it with `corners`)."""
    try:
        page.wait_for_function(f"args => ({GEOMETRY})(args).ok", arg=[selector, corners], timeout=WAIT_MS)
    except PlaywrightError:
        pytest.fail(f"{selector} is not fully in view: {geometry(page, selector, corners)}")


def settle(page) -> None:
    """Let the page react to what just changed (its layout observers run before the next frames)."""
    page.evaluate("() => new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")


def card_selector(card) -> str:
    return f'#log > li[data-job="{job_id(card)}"]'


def wait_done(page, card, images: int, done: str) -> None:
    expect(card.locator(".status")).to_have_text(done)
    expect(card.locator(".images img")).to_have_count(images)
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                           arg=f"{card_selector(card)} .images img", timeout=WAIT_MS)
    settle(page)


def wait_running(card) -> None:
    """The job has left the queue: its Cancel stays, its status is a step count or "Starting"."""
    expect(card).to_have_attribute("data-status", "running")


def submit(page, text: str):
    def send():
        page.fill("#prompt", text)
        page.press("#prompt", "Enter")
    return new_card(page, send)


def cancel_by_api(page, server, card) -> None:
    user = page.evaluate("localStorage.getItem('imagebot.user')")
    response = page.request.delete(f"{server.url}/api/jobs/{job_id(card)}", headers={"X-Imagebot-User": user})
    assert response.status == 200, response.text()


def figure_count(page) -> int:
    return page.locator("#gallery > figure:visible").count()


# --- the main path, in each language and on each screen ------------------------------------------------


@pytest.mark.parametrize("view, lang", BOTH)
def test_main_path(browser, server, view, lang):
    context, page, t = open_view(browser, server, view, lang)
    width, height = VIEWS[view]["viewport"].values()
    error = page.locator("#form-error")
    try:
        # The first screen: a welcome naming the default model, its description and its examples.
        expect(page.locator("#welcome")).to_be_visible()
        expect(page.locator("#welcome-model")).to_have_text(t("ui_welcome_model", name="demo"))
        expect(page.locator("#welcome-description")).to_have_text(DESCRIPTION)
        expect(page.locator("#examples button")).to_have_text(EXAMPLES)
        expect(page.locator("#prompt")).to_have_attribute("placeholder",
                                                          t("ui_placeholder_example", example=EXAMPLES[0]))
        expect(page.locator("#send")).to_have_text(t("ui_send"))
        for selector in ("#welcome h2", "#welcome-model", "#prompt", "#send", "#advanced-toggle",
                         *(f"#examples li:nth-child({n + 1}) button" for n in range(len(EXAMPLES)))):
            in_view(page, selector)
        assert scroll_width(page) <= width

        # An empty prompt sends nothing and says what to do; typing clears the message.
        posts = []
        page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
        press(page, "#send")
        expect(error).to_have_text(t("ui_prompt_needed", example=EXAMPLES[0]))
        in_view(page, "#form-error")
        page.fill("#prompt", "a")
        expect(error).to_be_hidden()
        page.fill("#prompt", "")
        assert posts == [] and cards(page).count() == 0

        # An example runs on a click; the job and then its images are in view.
        first = new_card(page, lambda: press(page, page.locator("#examples button").nth(1)))  # "... --n 2"
        expect(first.locator(".bubble.user")).to_contain_text(EXAMPLES[1].split(" --")[0])
        expect(page.locator("#welcome")).to_be_hidden()
        wait_done(page, first, 2, t("ui_done"))
        in_view(page, card_selector(first), corners=True)

        # Compact results: U1 U2 V1 V2, Reroll and a menu; on a laptop all in one row.
        actions = first.locator(".actions button:visible")
        expect(actions).to_have_text(["U1", "U2", "V1", "V2", t("ui_reroll"), "⋯"])
        for n in (1, 2):
            in_view(page, f"{card_selector(first)} .thumb:nth-child({n})")
        for action in ("upscale", "variation"):
            for index in (0, 1):
                in_view(page, f'{card_selector(first)} [data-action="{action}"][data-index="{index}"]')
        in_view(page, f'{card_selector(first)} [data-action="reroll"]')
        in_view(page, f'{card_selector(first)} [data-action="more"]')
        if view == "desktop":
            middles = [box["y"] + box["height"] / 2 for box in (actions.nth(n).bounding_box() for n in range(6))]
            assert max(middles) - min(middles) < 8, middles  # one row

        # With history above, a new job and its results still land in view (above the prompt box).
        second = submit(page, "a blue square on a yellow background --n 4 --model other")
        in_view(page, card_selector(second), corners=True)
        wait_done(page, second, 4, t("ui_done"))
        in_view(page, card_selector(second), corners=True)
        assert page.evaluate("scrollY") > 0  # the page did scroll: the first job is above
        expect(page.locator("#jump")).to_be_hidden()

        # The lightbox: one image large, pixel-sharp, with its parameters and actions.
        press(page, second.locator(".thumb").nth(1))
        lightbox = page.locator("#lightbox")
        expect(lightbox).to_be_visible()
        title = page.locator("#lightbox-title")
        expect(title).to_have_text(t("ui_image_of", index=4, count=6))  # chat order: 2 images, then 4
        for selector in ("#lb-image", "#lb-close", "#lb-prev", "#lb-next", "#lb-prompt",
                         *(f"#lb-actions > :nth-child({n})" for n in range(1, 6))):
            in_view(page, selector)
        box = page.locator("#lb-image").bounding_box()
        assert box["width"] >= 4 * 64 and abs(box["width"] - box["height"]) < 2, box
        assert page.locator("#lb-image").evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"
        expect(page.locator("#lb-prompt")).to_have_text("a blue square on a yellow background")
        expect(page.locator("#lb-params")).to_contain_text(str(seeds(second)[1]))
        expect(page.locator("#lb-params")).to_contain_text("other")
        expect(page.locator("#lb-actions [data-action=copy-seed]")).to_have_text(
            t("ui_copy_seed", seed=seeds(second)[1]))
        page.keyboard.press("ArrowRight")
        expect(title).to_have_text(t("ui_image_of", index=5, count=6))
        expect(page.locator("#lb-params")).to_contain_text(str(seeds(second)[2]))
        press(page, "#lb-prev")
        press(page, "#lb-prev")
        expect(title).to_have_text(t("ui_image_of", index=3, count=6))
        page.keyboard.press("Escape")
        expect(lightbox).to_be_hidden()
        in_view(page, card_selector(second), corners=True)

        # The menu: downloads, seed, settings, parameters, grid; every item can be seen and pressed.
        press(page, second.locator('[data-action="more"]'))
        items = second.locator('[role="menuitem"]')
        expect(items).to_have_text([*(t("ui_download_image", index=n) for n in range(1, 5)),
                                    t("ui_copy_seed", seed=seeds(second)[0]), t("ui_reuse"), t("ui_copy_params"),
                                    t("ui_grid")])
        for n in range(1, 9):
            in_view(page, f"{card_selector(second)} [role=menu] > :nth-child({n})")
        page.keyboard.press("Escape")
        expect(second.locator('[role="menu"]')).to_be_hidden()

        # Advanced settings: a drawer showing the model's defaults; the chat and prompt stay in view.
        press(page, "#advanced-toggle")
        expect(page.locator("#advanced")).to_be_visible()
        for field, placeholder in (("#steps", "3"), ("#size", "64x64"), ("#guidance", "7"),
                                   ("#seed", t("ui_seed_random")), ("#count", "1"), ("#negative", t("ui_none"))):
            expect(page.locator(field)).to_have_attribute("placeholder", placeholder)
        expect(page.locator("#scheduler option").first).to_have_text(t("ui_model_default", name="dpm++"))
        for field in ("#advanced-close", "#negative", "#model", "#aspect", "#size", "#steps", "#guidance", "#seed",
                      "#count", "#scheduler"):
            page.locator(field).scroll_into_view_if_needed()
            in_view(page, field)
        in_view(page, "#prompt")
        in_view(page, "#send")
        drawer = page.locator("#advanced").bounding_box()
        if view == "desktop":
            in_view(page, card_selector(second), corners=True)  # the drawer sits beside the chat
        else:
            assert drawer["height"] <= height / 2, drawer  # a bottom sheet, not the whole screen
            top = page.evaluate("document.querySelector('.top').getBoundingClientRect().bottom")
            composer = page.locator("#composer").bounding_box()
            assert composer["y"] - top >= 0.3 * height, (top, composer)  # a third of the screen is chat
            hit = page.evaluate("([x, y]) => !!document.elementFromPoint(x, y)?.closest('#log')",
                                [width / 2, (top + composer["y"]) / 2])
            assert hit, "the chat is not visible above the settings"
        assert scroll_width(page) <= width
        press(page, "#advanced-close")
        expect(page.locator("#advanced")).to_be_hidden()

        # The gallery: captions (prompt, seed) and filters by text and by model.
        press(page, "#tab-gallery")
        figures = page.locator("#gallery > figure")
        expect(figures).to_have_count(6)
        all_seeds = seeds(second) + seeds(first)  # newest first
        for n, seed in enumerate(all_seeds):
            expect(figures.nth(n).locator(".meta")).to_contain_text(t("ui_seed_label", seed=seed))
        expect(figures.nth(0).locator(".prompt")).to_have_text("a blue square on a yellow background")
        expect(figures.nth(5).locator(".prompt")).to_have_text(EXAMPLES[1].split(" --")[0])
        for selector in ("#gallery > figure:nth-child(1) .thumb", "#gallery > figure:nth-child(1) .prompt",
                         "#gallery > figure:nth-child(1) .meta", "#gallery-filter", "#gallery-model"):
            in_view(page, selector)
        expect(page.locator("#gallery-count")).to_have_text(t("ui_gallery_count", shown=6, total=6))
        page.select_option("#gallery-model", "other")
        expect(page.locator("#gallery-count")).to_have_text(t("ui_gallery_count", shown=4, total=6))
        assert figure_count(page) == 4
        page.select_option("#gallery-model", "")
        page.fill("#gallery-filter", "triangle")
        expect(page.locator("#gallery-count")).to_have_text(t("ui_gallery_count", shown=2, total=6))
        assert figure_count(page) == 2
        page.fill("#gallery-filter", "no such words")
        expect(page.locator("#gallery-no-match")).to_have_text(t("ui_gallery_no_match"))
        in_view(page, "#gallery-no-match")
        page.fill("#gallery-filter", "")
        expect(page.locator("#gallery-no-match")).to_be_hidden()
        assert figure_count(page) == 6
        press(page, figures.nth(0).locator(".thumb"))
        expect(title).to_have_text(t("ui_image_of", index=1, count=6))
        in_view(page, "#lb-image")
        page.keyboard.press("Escape")
        expect(lightbox).to_be_hidden()

        # Back in the chat, the newest job is where it was: in view.
        press(page, "#tab-chat")
        in_view(page, card_selector(second), corners=True)
        assert scroll_width(page) <= width
        assert page.errors.page == []
    finally:
        context.close()


# --- the newest job in view: after results, a reload, an upscale; not while the user reads ------------


@pytest.mark.parametrize("view, lang", BOTH)
def test_newest_job_in_view_unless_the_user_scrolled_up(browser, server, view, lang):
    context, page, t = open_view(browser, server, view, lang)
    done = t("ui_done")
    try:
        for prompt in ("some history --n 4", "more history --n 2"):
            wait_done(page, submit(page, prompt), 4 if "--n 4" in prompt else 2, done)
        slow = submit(page, SLOW)
        wait_running(slow)
        waiting = submit(page, "waiting behind it --n 2")
        in_view(page, card_selector(waiting), corners=True)

        # The user scrolls up to read: the page stays there and offers the way back.
        page.mouse.wheel(0, -20_000)
        page.wait_for_function("() => scrollY === 0")  # a function: an expression would need eval, which the CSP forbids
        in_view(page, "#jump")
        expect(page.locator("#jump")).to_have_text(t("ui_jump_newest"))
        cancel_by_api(page, server, slow)
        wait_done(page, waiting, 2, done)
        assert page.evaluate("scrollY") == 0
        assert not geometry(page, card_selector(waiting))["ok"]
        in_view(page, "#jump")
        press(page, "#jump")
        in_view(page, card_selector(waiting), corners=True)
        expect(page.locator("#jump")).to_be_hidden()

        # A reload while a job waits: back at the newest, and its results arrive in view.
        slow = submit(page, SLOW)
        wait_running(slow)
        waiting = submit(page, "waiting over a reload --n 2")
        load(page, server)
        waiting = card_by_id(page, job_id(waiting))
        expect(waiting.locator(".images img")).to_have_count(0)
        in_view(page, card_selector(waiting), corners=True)
        cancel_by_api(page, server, slow)
        wait_done(page, waiting, 2, done)
        in_view(page, card_selector(waiting), corners=True)

        # Upscale: the new job lands in view, and so does its result.
        upscale = new_card(page, lambda: press(page, waiting.locator('[data-action="upscale"]').first))
        in_view(page, card_selector(upscale), corners=True)
        wait_done(page, upscale, 1, done)
        in_view(page, card_selector(upscale), corners=True)
        assert scroll_width(page) <= VIEWS[view]["viewport"]["width"]
        assert page.errors.page == []
    finally:
        context.close()


# --- admin states, in each language -------------------------------------------------------------------


@pytest.mark.parametrize("view, lang", BOTH)
def test_admin_says_what_is_locked_and_why(browser, server, view, lang):
    context, page, t = open_view(browser, server, view, lang)
    state = page.locator("#admin-state")
    try:
        show_admin(page, tap=page.view == "phone")
        expect(page.locator("#admin-models > li")).to_have_count(2)
        expect(state).to_have_text(t("ui_admin_locked"))
        for selector in ("#admin-state", "#admin-token", "#admin-unlock", "#admin-reload"):
            in_view(page, selector)
        expect(page.locator("#admin-reload")).to_be_disabled()
        expect(page.locator('#admin-models [data-action="set-default"]')).to_be_disabled()
        page.fill("#admin-token", "wrong")
        press(page, "#admin-unlock")
        expect(state).to_have_text(t("ui_admin_wrong"))
        in_view(page, "#admin-state")
        expect(page.locator("#admin-reload")).to_be_disabled()
        page.fill("#admin-token", ADMIN_TOKEN)
        expect(state).to_have_text(t("ui_admin_locked"))  # the complaint goes once the token is changed
        press(page, "#admin-unlock")
        expect(state).to_have_text(t("ui_admin_unlocked"))
        expect(page.locator("#admin-reload")).to_be_enabled()
        expect(page.locator('#admin-models [data-action="set-default"]')).to_be_enabled()
        in_view(page, "#admin-lock")
        in_view(page, '#admin-models [data-action="set-default"]')
        press(page, "#admin-lock")
        expect(state).to_have_text(t("ui_admin_locked"))
        expect(page.locator("#admin-reload")).to_be_disabled()
        assert scroll_width(page) <= VIEWS[view]["viewport"]["width"]
        assert page.errors.page == []
    finally:
        context.close()
