"""The web page under a real browser: a running `imagebot serve`, Chromium through Playwright, and
the small helpers the page tests share (fixtures are registered in tests/frontends/web/conftest.py)."""


from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.helpers.models import add_pipeline_variant  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402

REPO = Path(__file__).resolve().parents[2]  # tests/helpers/page.py -> the checkout the server runs from
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ADMIN_TOKEN = "test-admin-token-5f2c"
WAIT_MS = 60_000  # one wait: generous, the CPU is shared
START_SECONDS = 90
DESKTOP = {"width": 1280, "height": 800}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXAMPLES = ["a red circle on a blue background", "a yellow triangle on a purple background --n 2",
            "a green square on a white background"]
DESCRIPTION = "A tiny random-weight model for the tests"
VARIANT_TOML = (f'kind = "pipeline"\ndescription = "{DESCRIPTION}"\nexamples = {json.dumps(EXAMPLES)}\n'
                '[defaults]\nsteps = 3\n')

if not Path(CHROMIUM).is_file():
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

expect.set_options(timeout=WAIT_MS)

# Records what each job card showed over time, whatever the speed of the job: every status text,
# the progress bar's highest value before the job finished, and whether the preview was shown.
RECORDER = """
window.__seen = {};
function __record() {
  for (const card of document.querySelectorAll("#log > li[data-job]")) {
    const seen = (window.__seen[card.dataset.job] ||= {statuses: [], maxBar: 0, previewShown: false,
                                                         previewLoaded: false});
    const status = card.querySelector(".status").textContent;
    if (status && seen.statuses[seen.statuses.length - 1] !== status) seen.statuses.push(status);
    const bar = card.querySelector(".bar");
    if (!bar.hidden) seen.maxBar = Math.max(seen.maxBar, Number(bar.getAttribute("aria-valuenow")));
    const preview = card.querySelector("img.preview");
    if (!preview.hidden && preview.getAttribute("src")) {
      seen.previewShown = true;
      if (!preview.__watched) {
        preview.__watched = true;
        const check = () => { if (preview.naturalWidth > 0) seen.previewLoaded = true; };
        preview.addEventListener("load", check);
        check();
      }
    }
  }
}
document.addEventListener("DOMContentLoaded", () => {
  new MutationObserver(__record).observe(document.body, {
    subtree: true, childList: true, characterData: true,
    attributes: true, attributeFilter: ["hidden", "aria-valuenow", "src"],
  });
});
"""


# --- the server ------------------------------------------------------------------------------------


class Server:
    """`imagebot serve` as a subprocess, on a config.toml in its own folder."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.models = root / "models"
        self.config = root / "config.toml"
        self.log = root / "serve.log"
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> None:
        self.config.write_text(
            f"[storage]\nstate_dir = '{self.root / 'state'}'\nmodels_dir = '{self.models}'\n\n"
            "[limits]\nmin_side = 32\n\n[queue]\njob_timeout = 120\n\n"
            f"[web]\nport = {self.port}\n", encoding="utf-8")

    def start(self) -> None:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "IMAGEBOT_ADMIN_TOKEN": ADMIN_TOKEN,
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        for name in ("IMAGEBOT_CONFIG", "DISCORD_TOKEN", "TELEGRAM_TOKEN"):
            env.pop(name, None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(self.config), "serve"],
                                         cwd=self.root, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_SECONDS
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"imagebot serve exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"imagebot serve did not answer /healthz within {START_SECONDS} s:\n{self.tail()}")
            time.sleep(0.2)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM (the graceful path), then SIGKILL if it does not exit in time. The exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def put_default(self, name: str) -> None:
        request = urllib.request.Request(self.url + "/api/models/default", method="PUT",
                                         data=f'{{"name": "{name}"}}'.encode(),
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {ADMIN_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10):
            pass


@contextlib.contextmanager
def serving(root: Path, pipeline_dir: Path, variants: dict[str, str], queue: str = "",
            server: type[Server] = Server, before_start: Callable[[Server], None] | None = None) -> Iterator[Server]:
    """A page server on `pipeline_dir` under the variant names given (name -> variant.toml), with
    extra `[queue]` lines; `before_start` runs once its config is written (to add users, say)."""
    srv = server(root, free_port())
    srv.models.mkdir()
    for name, toml in variants.items():
        add_pipeline_variant(srv.models, name, pipeline_dir, toml)
    srv.write_config()
    if queue:
        srv.config.write_text(srv.config.read_text().replace("[queue]\n", f"[queue]\n{queue}"))
    if before_start is not None:
        before_start(srv)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_pipeline_dir):
    with serving(tmp_path_factory.mktemp("webpage"), tiny_pipeline_dir,
                 {"demo": VARIANT_TOML, "other": VARIANT_TOML}) as srv:
        yield srv


# --- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Errors:
    def __init__(self) -> None:
        self.console: list[str] = []
        self.page: list[str] = []


def open_page(context, server: Server):
    """A page of `context` on the server, loaded (body[data-ready]); console and script errors collected."""
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors = Errors()
    page.on("console", lambda message: errors.console.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.page.append(str(error)))
    page.errors = errors
    load(page, server)
    return page


def load(page, server: Server) -> None:
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready=true]", state="attached")


def new_context(browser, **options):
    context = browser.new_context(**{"viewport": DESKTOP, **options})
    context.add_init_script(RECORDER)
    return context


@pytest.fixture
def context(browser):
    ctx = new_context(browser)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context, server):
    return open_page(context, server)


# --- helpers ---------------------------------------------------------------------------------------


def cards(page):
    return page.locator("#log > li[data-job]")


def card_by_id(page, job_id: str):
    return page.locator(f'#log > li[data-job="{job_id}"]')


def new_card(page, action):
    """Do `action` and return the job card it adds."""
    before = cards(page).count()
    action()
    expect(cards(page)).to_have_count(before + 1)
    return card_by_id(page, cards(page).nth(before).get_attribute("data-job"))


def submit(page, text: str):
    """Type a prompt and press Enter; the new job card."""
    def send():
        page.fill("#prompt", text)
        page.press("#prompt", "Enter")
    return new_card(page, send)


def job_id(card) -> str:
    return card.get_attribute("data-job")


def wait_done(page, card, images: int):
    """Wait for Done and for `images` <img> elements that have loaded; their natural sizes."""
    expect(card.locator(".status")).to_have_text("Done")
    expect(card.locator(".images img")).to_have_count(images)
    selector = f'#log > li[data-job="{job_id(card)}"] .images img'
    page.wait_for_function("sel => [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                           arg=selector, timeout=WAIT_MS)
    return natural_sizes(card.locator(".images img"))


def natural_sizes(images) -> list[tuple[int, int]]:
    return [tuple(size) for size in images.evaluate_all("imgs => imgs.map(i => [i.naturalWidth, i.naturalHeight])")]


def seeds(card) -> list[int]:
    """The seeds of a card's images (each image's alt text ends with "(seed N)")."""
    return [int(re.search(r"\(seed (\d+)\)$", alt).group(1))
            for alt in card.locator(".images img").evaluate_all("imgs => imgs.map(i => i.alt)")]


def open_menu(card):
    """Open the card's "more" menu (downloads, seed, settings, parameters, grid); the menu."""
    card.locator('[data-action="more"]').click()
    menu = card.locator('[role="menu"]')
    expect(menu).to_be_visible()
    return menu


def open_advanced(page):
    page.click("#advanced-toggle")
    expect(page.locator("#advanced")).to_be_visible()


def show_admin(page, tap: bool = False) -> None:
    """Show the Admin view: by its tab once the page is an admin's (a working token, an admin
    account), else from Advanced settings > Admin sign-in, where a visitor enters the token."""
    press = (lambda locator: locator.tap()) if tap else (lambda locator: locator.click())
    if page.locator("#tab-admin").is_visible():
        press(page.locator("#tab-admin"))
    else:
        if page.locator("#advanced").is_hidden():
            press(page.locator("#advanced-toggle"))
        press(page.locator("#admin-entry"))
    expect(page.locator("#view-admin")).to_be_visible()


def seen(page, card) -> dict:
    return page.evaluate("id => window.__seen[id]", job_id(card))


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC, data[:16]
    return struct.unpack(">II", data[16:24])


def scroll_width(page) -> int:
    return page.evaluate("document.scrollingElement.scrollWidth")


# --- tests -----------------------------------------------------------------------------------------
