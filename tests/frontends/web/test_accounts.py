"""Password accounts over HTTP ([web] auth = "password"), through the real app with real httpx
clients: signing in and out, the session cookie, an account as the identity of its jobs on every
device, admin accounts, and what an anonymous caller may still reach."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from tests.helpers.api import ADMIN, ADMIN_TOKEN, ALICE, assert_error

PASSWORD = "a long enough password"
ACCOUNTS = {"web": {"auth": "password"}}


async def with_users(make_api, **sections):
    api = await make_api(**{**ACCOUNTS, **sections})
    await api.service.accounts.add("alice", PASSWORD)
    await api.service.accounts.add("bob", PASSWORD)
    await api.service.accounts.add("root", PASSWORD, is_admin=True)
    return api


def device(api) -> httpx.AsyncClient:
    """Another client (a second browser or script) on the same server, with its own cookies."""
    return httpx.AsyncClient(transport=api.client._transport, base_url="http://localhost", timeout=60.0)


async def sign_in(client: httpx.AsyncClient, name: str, password: str = PASSWORD, **headers) -> httpx.Response:
    return await client.post("/api/session", json={"name": name, "password": password}, headers=headers)


async def test_anonymous_callers_are_told_to_sign_in_and_only_the_page_and_health_stay_open(make_api):
    api = await with_users(make_api)
    job_id = "0" * 24
    for method, path in [("POST", "/api/jobs"), ("GET", "/api/history"), ("GET", f"/api/jobs/{job_id}"),
                         ("DELETE", f"/api/jobs/{job_id}"), ("GET", f"/api/jobs/{job_id}/events"), ("GET", "/api/events"),
                         ("GET", f"/api/jobs/{job_id}/preview"), ("POST", f"/api/jobs/{job_id}/reroll"),
                         ("GET", "/api/models"), ("GET", "/api/images/x-0.png"), ("GET", "/api/audit"),
                         ("POST", "/api/models/reload"), ("POST", "/api/admin/ban")]:
        response = await api.client.request(method, path, headers=ALICE, json={} if method == "POST" else None)
        body = assert_error(response, 401, "Sign in first", "POST /api/session")
        assert body["key"] == "sign_in_required"
    for path in ("/healthz", "/", "/static/main.js", "/api/messages", "/api/options"):
        assert (await api.client.get(path)).status_code == 200, path
    assert (await api.client.get("/api/session")).json() == {"auth": "password", "user": None, "admin": False}


async def test_signing_in_sets_a_strict_http_only_cookie_and_signing_out_ends_it(make_api):
    api = await with_users(make_api)
    assert_error(await sign_in(api.client, "alice", "not the password"), 401, "Wrong user name or password")
    assert_error(await sign_in(api.client, "nobody"), 401, "Wrong user name or password")  # the same answer
    response = await sign_in(api.client, "Alice")
    assert response.status_code == 200 and response.json() == {"auth": "password", "user": "alice", "admin": False}
    cookie = response.headers["set-cookie"]
    assert cookie.startswith("imagebot_session=")
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "max-age", "path", "samesite"} <= attributes and "secure" not in attributes  # plain http
    assert "samesite=strict" in cookie.lower() and f"max-age={30 * 86400}" in cookie.lower()
    assert PASSWORD not in cookie
    assert (await api.client.get("/api/session")).json()["user"] == "alice"
    assert (await api.client.get("/api/history")).status_code == 200

    copied = device(api)
    copied.cookies.set("imagebot_session", api.client.cookies["imagebot_session"])
    assert (await api.client.delete("/api/session")).json() == {"user": None}
    assert "imagebot_session" not in api.client.cookies
    # the session itself has ended: a copy of the cookie kept elsewhere no longer works
    assert_error(await copied.get("/api/history"), 401, "Sign in first")
    await copied.aclose()


async def test_the_cookie_is_secure_when_the_request_came_over_https_through_a_trusted_proxy(make_api):
    api = await with_users(make_api, web={"auth": "password", "trusted_proxies": ["127.0.0.1"]})
    # httpx's ASGI transport connects from 127.0.0.1: the trusted proxy, which says the browser used https
    secure = await sign_in(api.client, "alice", **{"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"})
    assert "secure" in secure.headers["set-cookie"].lower()
    plain = await sign_in(device(api), "alice", **{"X-Forwarded-Proto": "http"})
    assert "secure" not in plain.headers["set-cookie"].lower()


async def test_a_client_that_is_no_proxy_cannot_ask_for_a_secure_cookie_it_would_not_get_back(make_api):
    api = await with_users(make_api)  # no trusted proxies
    response = await sign_in(api.client, "alice", **{"X-Forwarded-Proto": "https"})
    assert "secure" not in response.headers["set-cookie"].lower()


async def test_an_account_owns_its_jobs_on_every_device_and_no_one_elses(make_api):
    api = await with_users(make_api)
    laptop, phone, bob = api.client, device(api), device(api)
    for client, name in ((laptop, "alice"), (phone, "alice"), (bob, "bob")):
        assert (await sign_in(client, name)).status_code == 200
    # the page's client key is not who the job belongs to once signed in
    submitted = await laptop.post("/api/jobs", json={"prompt": "a fox --steps 1"}, headers=ALICE)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert [job["id"] for job in (await phone.get("/api/history")).json()["jobs"]] == [job_id]
    assert (await bob.get("/api/history", headers=ALICE)).json()["jobs"] == []
    assert_error(await bob.delete(f"/api/jobs/{job_id}"), 403, "belongs to someone else")
    job = await api.service.job(job_id)
    assert job.origin.user_key == "web:user:alice"
    for client in (phone, bob):
        await client.aclose()


async def test_an_admin_account_uses_the_admin_routes_without_the_token_and_others_cannot(make_api):
    api = await with_users(make_api, admin_token=None)
    root, alice = device(api), device(api)
    await sign_in(root, "root")
    await sign_in(alice, "alice")
    assert (await root.get("/api/models")).json()["admin"] == {"enabled": True, "unlocked": True}
    assert (await alice.get("/api/models")).json()["admin"] == {"enabled": True, "unlocked": False}
    ban = {"user": "web:user:alice", "reason": "spam"}
    assert_error(await api.client.post("/api/admin/ban", json=ban), 401, "Sign in first")
    assert_error(await alice.post("/api/admin/ban", json=ban), 403, "Only admins")
    assert_error(await alice.get("/api/audit"), 403, "Only admins")
    assert (await root.post("/api/admin/ban", json=ban)).json() == {"banned": "web:user:alice", "covers": []}
    assert_error(await alice.post("/api/jobs", json={"prompt": "a fox"}), 403, "spam")
    entries = (await root.get("/api/audit")).json()["entries"]
    assert entries[0]["actor"] == "web:user:root" and entries[0]["action"] == "ban"
    assert (await root.post("/api/admin/unban", json={"user": "web:user:alice"})).status_code == 200
    for client in (root, alice):
        await client.aclose()


async def test_the_admin_token_still_works_for_scripts_when_accounts_are_on(make_api):
    api = await with_users(make_api)
    assert (await api.client.get("/api/audit", headers=ADMIN)).status_code == 200
    response = await api.client.post("/api/jobs", json={"prompt": "a fox --steps 1"}, headers=ADMIN)
    assert response.status_code == 202, response.text
    wrong = {"Authorization": "Bearer " + "x" * len(ADMIN_TOKEN)}
    assert_error(await api.client.get("/api/history", headers=wrong), 401, "Sign in first")


async def test_failed_sign_ins_are_limited_per_address(make_api):
    api = await with_users(make_api)
    for _ in range(10):
        assert_error(await sign_in(api.client, "alice", "guess number n"), 401)
    assert_error(await sign_in(api.client, "alice", "guess number 11"), 429, "Too many failed sign-ins")
    assert_error(await sign_in(api.client, "alice"), 429)  # even the right password, for a minute
    # another address is not held up by this one's guesses
    other = httpx.AsyncClient(transport=httpx.ASGITransport(app=api.client._transport.app, client=("192.0.2.7", 1)),
                              base_url="http://localhost")
    assert (await sign_in(other, "alice")).status_code == 200
    await other.aclose()


async def test_a_burst_of_guesses_sent_at_once_is_limited_as_one_after_another_would_be(make_api, caplog):
    """Every try counts before its password is hashed: of 200 guesses sent together only the
    first ten are checked, so the right password among them does not get in."""
    api = await with_users(make_api)
    # the right password deep in the burst
    guesses = [sign_in(api.client, "alice", PASSWORD if n == 150 else f"guess number {n}") for n in range(200)]
    with caplog.at_level(logging.WARNING, logger="bot.frontends.web.deps"):
        responses = await asyncio.gather(*guesses)
    codes = [response.status_code for response in responses]
    assert codes.count(401) == 10 and codes.count(429) == 190, codes
    assert codes[150] == 429
    assert_error(responses[-1], 429, "Too many failed sign-ins")
    failed = [record.getMessage() for record in caplog.records if "failed sign-in" in record.getMessage()]
    assert len(failed) == 10 and all("'alice'" in line and "127.0.0.1" in line for line in failed), failed
    assert not any("guess number" in record.getMessage() for record in caplog.records)  # passwords never
    # a right password after a wrong one does not use up a try: nine more wrong ones still answer 401
    fresh = device(api)
    fresh._transport = httpx.ASGITransport(app=api.client._transport.app, client=("192.0.2.8", 1))
    assert (await sign_in(fresh, "alice")).status_code == 200
    for _ in range(10):
        assert_error(await sign_in(fresh, "alice", "wrong"), 401)
    assert_error(await sign_in(fresh, "alice", "wrong"), 429)
    await fresh.aclose()


async def test_without_accounts_there_is_nothing_to_sign_in_to(make_api):
    api = await make_api()
    assert (await api.client.get("/api/session")).json() == {"auth": "none", "user": None, "admin": False}
    assert_error(await sign_in(api.client, "alice"), 404, "no accounts")
    assert (await api.client.get("/api/history", headers=ALICE)).status_code == 200


@pytest.mark.parametrize("body", [{"name": "alice"}, {"name": "alice", "password": ""}, {"name": "a", "password": "p" * 300},
                                  {"name": "alice", "password": PASSWORD, "admin": True}])
async def test_a_malformed_sign_in_is_refused_saying_what_is_wrong(make_api, body):
    api = await with_users(make_api)
    assert_error(await api.client.post("/api/session", json=body), 422, "Invalid request")
