"""Accounts in the page under Chromium ([web] auth = "password"): a user signs in through the page's
form and generates; an anonymous visitor and an ordinary user cannot reach the admin routes, an
admin account can, without the admin token; signing out ends it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.helpers.page import REPO, VARIANT_TOML, Server, new_context, open_page, serving, submit, wait_done

pytestmark = pytest.mark.browser

PASSWORD = "a long enough password"


class AccountsServer(Server):
    def write_config(self) -> None:
        super().write_config()
        with open(self.config, "a", encoding="utf-8") as config:
            config.write('auth = "password"\n')

    def add_user(self, name: str, *flags: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("IMAGEBOT_CONFIG", None)
        subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(self.config), "users", "add", name,
                        "--password-stdin", *flags], input=PASSWORD, text=True, env=env, check=True, timeout=120,
                       capture_output=True)


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory, tiny_pipeline_dir):
    def add_users(srv: AccountsServer) -> None:
        srv.add_user("alice")
        srv.add_user("root", "--admin")

    with serving(tmp_path_factory.mktemp("accounts"), tiny_pipeline_dir, {"demo": VARIANT_TOML},
                 server=AccountsServer, before_start=add_users) as srv:
        yield srv


def sign_in(page, name: str, password: str = PASSWORD) -> None:
    page.fill("#sign-in-name", name)
    page.fill("#sign-in-password", password)
    page.click("#sign-in-submit")


def status_of(context, server, path: str) -> int:
    """The status of a GET from this browser context (its cookies included)."""
    return context.request.get(server.url + path).status


def test_a_user_signs_in_through_the_page_generates_and_cannot_reach_admin(browser, accounts_server):
    context = new_context(browser)
    page = open_page(context, accounts_server)
    expect(page.locator("#sign-in")).to_be_visible()
    expect(page.locator(".tabs")).to_be_hidden()
    expect(page.locator("#view-chat")).to_be_hidden()
    assert status_of(context, accounts_server, "/api/audit") == 401
    assert status_of(context, accounts_server, "/api/history") == 401

    sign_in(page, "alice", "not the password")
    expect(page.locator("#sign-in-error")).to_have_text("Wrong user name or password.")
    sign_in(page, "alice")
    page.wait_for_selector("body[data-ready=true] #account:not([hidden])", state="attached")
    expect(page.locator("#account-name")).to_have_text("Signed in as alice")
    cookie = next(c for c in context.cookies() if c["name"] == "imagebot_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # the page's scripts cannot read the session

    card = submit(page, "a red circle on a blue background --steps 2")
    assert len(wait_done(page, card, 1)) == 1

    assert status_of(context, accounts_server, "/api/audit") == 403
    # no Admin tab for an account that is not an admin's, nor a way to type the token
    expect(page.locator("#tab-admin")).to_be_hidden()
    expect(page.locator("#admin-entry")).to_have_attribute("hidden", "")

    # the same account on another device sees the same history
    other = new_context(browser)
    phone = open_page(other, accounts_server)
    sign_in(phone, "alice")
    phone.wait_for_selector("body[data-ready=true] #account:not([hidden])", state="attached")
    expect(phone.locator(f'#log > li[data-job="{card.get_attribute("data-job")}"] .status')).to_have_text("Done")
    other.close()

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert status_of(context, accounts_server, "/api/history") == 401
    assert not page.errors.page and not [e for e in page.errors.console if "401" not in e and "403" not in e]
    context.close()


def test_an_admin_account_unlocks_the_admin_tab_without_the_token(browser, accounts_server):
    context = new_context(browser)
    page = open_page(context, accounts_server)
    sign_in(page, "root")
    page.wait_for_selector("body[data-ready=true] #account:not([hidden])", state="attached")
    assert status_of(context, accounts_server, "/api/audit") == 200
    page.click("#tab-admin")
    expect(page.locator("#admin-state")).to_contain_text("admin account")
    expect(page.locator("#admin-login")).to_be_hidden()  # no token to type
    expect(page.locator("#admin-reload")).to_be_enabled()
    page.click("#admin-reload")
    expect(page.locator("#admin-message")).to_contain_text("Added:")
    context.close()


def test_an_admin_bans_and_unbans_from_the_admin_tab_and_sees_the_audit_log(browser, accounts_server):
    alice_context = new_context(browser)
    alice = open_page(alice_context, accounts_server)
    sign_in(alice, "alice")
    alice.wait_for_selector("body[data-ready=true] #account:not([hidden])", state="attached")

    context = new_context(browser)
    page = open_page(context, accounts_server)
    sign_in(page, "root")
    page.wait_for_selector("body[data-ready=true] #account:not([hidden])", state="attached")
    page.click("#tab-admin")
    expect(page.locator("#admin-users")).to_be_visible()

    # clear errors before anything is sent
    page.fill("#ban-user", "alice")
    page.click("#ban-submit")
    expect(page.locator("#ban-message")).to_contain_text("web:user:NAME")
    expect(page.locator("#ban-user")).to_have_attribute("aria-invalid", "true")
    page.fill("#ban-user", "web:user:alice")
    page.click("#ban-submit")
    expect(page.locator("#ban-message")).to_have_text("Say why: the banned user is shown the reason.")

    page.fill("#ban-reason", "posting spam")
    page.click("#ban-submit")
    expect(page.locator("#ban-message")).to_have_text("web:user:alice is banned.")
    expect(page.locator("#admin-audit li").first).to_contain_text("web:user:root · ban · user: web:user:alice, reason: posting spam")

    alice.fill("#prompt", "a red circle on a blue background")
    alice.press("#prompt", "Enter")
    expect(alice.locator("#form-error")).to_contain_text("posting spam")

    page.click("#unban-submit")
    expect(page.locator("#ban-message")).to_have_text("web:user:alice may use the bot again.")
    expect(page.locator("#admin-audit li").first).to_contain_text("· unban · user: web:user:alice")
    card = submit(alice, "a red circle on a blue background --steps 2")
    assert len(wait_done(alice, card, 1)) == 1
    for each in (alice_context, context):
        each.close()
