"""Trust and safety over HTTP, through the real app: jobs belong to their owners and are named by
public ids, client keys and addresses, the Host/Origin/JSON checks and security headers, the event
stream cap, and the admin routes with their failure limit."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bot.frontends.web.security import CONTENT_SECURITY_POLICY
from tests.helpers.api import ADMIN, ADMIN_TOKEN, ALICE, BOB, assert_error, png

STATIC = Path(__file__).resolve().parents[3] / "bot" / "frontends" / "web" / "static"


# --- 1. jobs belong to their owners; a job id is a capability -----------------------------------------


async def test_other_clients_cannot_list_cancel_derive_or_read_history_of_my_jobs(make_api):
    api = await make_api(limits={"max_steps": 500})
    done = await api.submit("a finished one --steps 1")
    await api.wait(done["id"])
    holder = await api.hold_worker()
    waiting = await api.submit("a waiting one --steps 1")
    internal = (await api.service.job(waiting["id"])).id

    history = (await api.client.get("/api/history", headers=BOB)).json()["jobs"]
    assert history == []  # Bob's list has none of Alice's jobs
    assert_error(await api.client.delete(f"/api/jobs/{waiting['id']}", headers=BOB), 403, "belongs to someone else")
    for action in ("reroll", "variation", "upscale"):
        response = await api.client.post(f"/api/jobs/{done['id']}/{action}", json={"index": 0}, headers=BOB)
        assert_error(response, 403, "belongs to someone else")
    assert (await api.client.get("/api/history", headers=BOB)).json()["jobs"] == []  # nothing was made for Bob

    # Holding the id is what lets one look: Bob was given it, so he may read and follow the job...
    assert (await api.job(waiting["id"], BOB))["status"] == "queued"
    # ...but the internal (counting) ids lead nowhere on any route.
    for method, path in [("GET", f"/api/jobs/{internal}"), ("DELETE", f"/api/jobs/{internal}"),
                         ("GET", f"/api/jobs/{internal}/events"), ("GET", f"/api/jobs/{internal}/preview"),
                         ("POST", f"/api/jobs/{internal}/reroll")]:
        assert_error(await api.client.request(method, path, headers=ALICE), 404)
    assert (await api.job(waiting["id"]))["status"] == "queued"  # untouched by all of the above
    mine = [job["id"] for job in (await api.client.get("/api/history", headers=ALICE)).json()["jobs"]]
    assert set(mine) == {done["id"], waiting["id"]}
    await api.release(holder)


async def test_images_have_unguessable_names_and_answers_show_no_server_paths(api):
    job = await api.submit("a fox --steps 1 --seed 3")
    finished = await api.wait(job["id"])
    assert finished["images"][0]["url"] == f"/api/images/{job['id']}-0.png"
    image = await api.client.get(finished["images"][0]["url"])
    assert image.headers["cache-control"] == "private, max-age=31536000, immutable"
    variation = (await api.client.post(f"/api/jobs/{job['id']}/variation", json={"index": 0}, headers=ALICE))
    assert variation.status_code == 202, variation.text
    assert variation.json()["request"]["init_image"] == f"{job['id']}-0.png"
    shown = await api.client.get(f"/api/jobs/{variation.json()['id']}", headers=ALICE)
    assert shown.json()["request"]["init_image"] == f"{job['id']}-0.png"
    assert str(api.outputs.parent) not in variation.text + shown.text
    await api.wait(variation.json()["id"])


def test_error_texts_lose_absolute_paths():
    from bot.frontends.web.schemas import without_paths
    text = "generation failed: OSError: No such file: '/srv/imagebot/outputs/abc-0.png' (C:\\bot\\x.safetensors)"
    assert without_paths(text) == "generation failed: OSError: No such file: 'abc-0.png' (x.safetensors)"
    assert without_paths("3/4 done") == "3/4 done"


# --- 2. identities ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["alice", "a" * 15, "a" * 65, "alice.example.org", "anon-127.0.0.1", "alice:0123456789abcdef"])
async def test_a_malformed_client_key_is_refused_with_what_is_allowed(api, key):
    response = await api.client.post("/api/jobs", json={"prompt": "a fox"}, headers={"X-Imagebot-User": key})
    assert_error(response, 400, "16 to 64", "'_' or '-'")
    assert response.json()["key"] == "bad_client_key"


async def test_without_a_key_the_caller_is_their_address(api):
    job = await api.submit("a fox --steps 1", {})
    origin = (await api.service.job(job["id"])).origin
    assert (origin.user_id, origin.address) == ("anon-127.0.0.1", "127.0.0.1")
    assert [j["id"] for j in (await api.client.get("/api/history")).json()["jobs"]] == [job["id"]]
    await api.wait(job["id"])


async def test_rotating_keys_from_one_address_are_capped_by_the_address_quota(make_api):
    api = await make_api(queue={"max_queued_per_address": 5, "max_queued_per_user": 10}, limits={"max_steps": 500})
    answers = [await api.client.post("/api/jobs", json={"prompt": "a fox --steps 500"},
                                     headers={"X-Imagebot-User": f"rotated-key-{n:04d}-abcdef"}) for n in range(80)]
    assert [a.status_code for a in answers].count(202) == 5
    assert {a.json()["key"] for a in answers if a.status_code != 202} == {"address_queue_full"}


async def test_x_forwarded_for_counts_only_from_a_trusted_proxy(make_api):
    trusting = await make_api(web={"trusted_proxies": ["127.0.0.0/8"]})
    forwarded = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9, 127.0.0.5"}
    job = await trusting.submit("a fox --steps 1", forwarded)
    assert (await trusting.service.job(job["id"])).origin.address == "203.0.113.9"  # the rightmost untrusted hop
    await trusting.wait(job["id"])


async def test_x_forwarded_for_is_ignored_from_anyone_else(api):
    job = await api.submit("a fox --steps 1", {**ALICE, "X-Forwarded-For": "203.0.113.9"})
    assert (await api.service.job(job["id"])).origin.address == "127.0.0.1"
    await api.wait(job["id"])


# --- 3. where requests may come from ---------------------------------------------------------------


async def test_a_foreign_host_is_refused(api):
    for host in ("evil.example", "evil.example:7860", "localhost.evil.example"):
        response = await api.client.get("/api/options", headers={"Host": host})
        assert_error(response, 421, "allowed_hosts")
    for host in ("localhost:7860", "127.0.0.1", "[::1]:7860"):
        assert (await api.client.get("/api/options", headers={"Host": host})).status_code == 200
    # An address typed as digits cannot be a rebinding attacker's name: friends on a LAN get in.
    for host in ("192.168.1.5:7860", "10.0.0.7", "[fe80::1]:7860"):
        assert (await api.client.get("/api/options", headers={"Host": host})).status_code == 200


async def test_allowed_hosts_are_configurable_and_star_allows_any(make_api):
    named = await make_api(web={"allowed_hosts": ["images.example.org"]})
    assert (await named.client.get("/api/options", headers={"Host": "images.example.org"})).status_code == 200
    assert (await named.client.get("/api/options")).status_code == 421  # localhost no longer listed
    assert (await named.client.get("/api/options", headers={"Host": "192.168.1.5"})).status_code == 421
    anything = await make_api(web={"allowed_hosts": ["*"]})
    assert (await anything.client.get("/api/options", headers={"Host": "whatever.example"})).status_code == 200


async def test_a_cross_site_form_post_to_a_derive_route_is_refused(api):
    job = await api.submit("a fox --steps 1")
    await api.wait(job["id"])
    path = f"/api/jobs/{job['id']}/reroll"
    form = {"content-type": "application/x-www-form-urlencoded"}
    response = await api.client.post(path, content=b"index=0", headers={**ALICE, **form, "Origin": "http://evil.example"})
    assert_error(response, 403, "http://evil.example")
    response = await api.client.post(path, content=b"index=0", headers={**ALICE, **form})  # no Origin: still not JSON
    assert_error(response, 415, "application/json")
    response = await api.client.post(path, content=b"{}", headers={**ALICE, "content-type": "text/plain"})
    assert_error(response, 415)
    same_site = await api.client.post(path, json={"index": 0}, headers={**ALICE, "Origin": "http://localhost"})
    assert same_site.status_code == 202, same_site.text
    await api.wait(same_site.json()["id"])
    assert (await api.client.delete(f"/api/jobs/{job['id']}", headers={**ALICE, "Origin": "null"})).status_code == 403


async def test_every_answer_carries_the_security_headers(api):
    for path in ("/", "/api/options", "/api/jobs/nothing", "/static/main.js"):
        response = await api.client.get(path, headers={"Host": "evil.example"} if path == "/api/options" else {})
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["x-frame-options"] == "DENY"


async def test_the_page_scripts_are_modules_served_as_javascript(api):
    """One module script from this server (allowed by script-src 'self'); main.js imports the rest,
    each a file here, by a relative path (no build step, nothing from elsewhere), none too long."""
    html = (STATIC / "index.html").read_text()
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="/static/main.js">']
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY
    imported, queue = set(), ["main.js"]
    while queue:
        name = queue.pop()
        if name in imported:
            continue
        imported.add(name)
        source = (STATIC / name).read_text()
        assert len(source.splitlines()) <= 300, name
        assert not re.search(r"\b(window|globalThis|self)\.\w+\s*=[^=]", source), name  # nothing shared but by imports
        for target in re.findall(r'^import [^;]*? from "([^"]+)";$', source, re.MULTILINE):
            assert target.startswith("./") and target.endswith(".js"), (name, target)
            queue.append(target[2:])
    assert imported == {path.name for path in STATIC.glob("*.js")}  # every script is reached from main.js
    for name in imported:
        response = await api.client.get(f"/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].split(";")[0] in ("text/javascript", "application/javascript"), name


def test_the_page_works_under_the_content_security_policy():
    """No inline scripts, styles or handlers: the policy would block them."""
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html, re.IGNORECASE)
    assert not re.search(r"https?://", re.sub(r"<!--.*?-->", "", html, flags=re.S))


# --- 4. event streams per client --------------------------------------------------------------------


async def test_event_streams_are_capped_per_client(make_api):
    api = await make_api(limits={"max_steps": 500}, web={"max_streams_per_client": 2})
    holder = await api.hold_worker()
    job = await api.submit("a waiting one --steps 1")
    slots = api.client._transport.app.state.streams

    async def follow(headers):
        async with api.client.stream("GET", f"/api/jobs/{job['id']}/events", headers=headers) as response:
            await response.aread()
            return response.status_code

    readers = [asyncio.create_task(follow(ALICE)) for _ in range(2)]
    while slots.open["alice-0123456789abcdef"] < 2:
        await asyncio.sleep(0.01)
    assert_error(await api.client.get(f"/api/jobs/{job['id']}/events", headers=ALICE), 429, "Too many open event streams")
    other = asyncio.create_task(follow(BOB))  # another client still gets one
    while slots.open["bob-0123456789abcdef"] < 1:
        await asyncio.sleep(0.01)
    await api.release(holder)
    assert await asyncio.gather(*readers, other) == [200, 200, 200]
    assert slots.open.total() == 0  # every slot given back when its stream ended


async def test_event_streams_are_capped_per_address_whatever_keys_it_sends(make_api):
    api = await make_api(limits={"max_steps": 500}, web={"max_streams_per_client": 2, "max_streams_per_address": 3})
    holder = await api.hold_worker()
    job = await api.submit("a waiting one --steps 1")
    slots = api.client._transport.app.state.streams
    there, elsewhere = client_at(api, "203.0.113.7"), client_at(api, "198.51.100.2")

    async def follow(client, key):
        async with client.stream("GET", f"/api/jobs/{job['id']}/events", headers={"X-Imagebot-User": key}) as response:
            await response.aread()
            return response.status_code

    keys = ["first-key-0123456789", "first-key-0123456789", "second-key-012345678"]
    readers = [asyncio.create_task(follow(there, key)) for key in keys]
    while slots.open_from["203.0.113.7"] < 3:
        await asyncio.sleep(0.01)
    fresh = {"X-Imagebot-User": "third-key-0123456789"}  # a key never seen: the address is full anyway
    assert_error(await there.get(f"/api/jobs/{job['id']}/events", headers=fresh), 429, "Too many open event streams")
    other = asyncio.create_task(follow(elsewhere, "third-key-0123456789"))  # another address still gets one
    while slots.open_from["198.51.100.2"] < 1:
        await asyncio.sleep(0.01)
    await api.release(holder)
    assert await asyncio.gather(*readers, other) == [200, 200, 200, 200]
    assert slots.open.total() == 0 and slots.open_from.total() == 0
    await there.aclose()
    await elsewhere.aclose()


async def test_one_client_cannot_fill_the_upload_pool_with_any_number_of_keys(make_api):
    api = await make_api(limits={"max_uploads_per_user": 2, "max_uploads_per_address": 3})
    there, elsewhere = client_at(api, "203.0.113.7"), client_at(api, "198.51.100.2")
    body = png(Image.new("RGB", (32, 32), "green"))

    async def upload(client, key):
        return await client.post("/api/uploads", content=body,
                                 headers={"X-Imagebot-User": key, "Content-Type": "image/png"})

    for _ in range(2):
        assert (await upload(there, "first-key-0123456789")).status_code == 201
    assert_error(await upload(there, "first-key-0123456789"), 429, "You already keep 2 uploaded images",
                 "the limit is 2 images")
    assert (await upload(there, "second-key-012345678")).status_code == 201
    assert_error(await upload(there, "third-key-0123456789"), 429, "Your network address already keeps 3")
    assert (await upload(elsewhere, "fourth-key-012345678")).status_code == 201  # everyone else is served
    assert (await upload(api.client, "root-0123456789abcdef")).status_code == 201
    await there.aclose()
    await elsewhere.aclose()


# --- 5. admin over HTTP -----------------------------------------------------------------------------


async def test_admins_ban_and_unban_and_read_the_audit_log(api):
    body = {"user": "web:bob-0123456789abcdef", "reason": "spamming the queue"}
    assert_error(await api.client.post("/api/admin/ban", json=body, headers=ALICE), 401)
    response = await api.client.post("/api/admin/ban", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    refused = await api.client.post("/api/jobs", json={"prompt": "a fox"}, headers=BOB)
    assert_error(refused, 403, "spamming the queue")
    assert (await api.client.post("/api/admin/unban", json={"user": body["user"]}, headers=ADMIN)).status_code == 200
    job = await api.submit("a fox --steps 1", BOB)
    entries = (await api.client.get("/api/audit", headers=ADMIN)).json()["entries"]
    assert [entry["action"] for entry in entries][:2] == ["unban", "ban"]
    assert_error(await api.client.get("/api/audit", headers=BOB), 401)
    bad = await api.client.post("/api/admin/ban", json={"user": "bob", "reason": "x"}, headers=ADMIN)
    assert_error(bad, 422)
    await api.wait(job["id"])


def client_at(api, address: str) -> httpx.AsyncClient:
    """A client calling the same app from another network address."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=api.client._transport.app, client=(address, 1)),
                             base_url="http://localhost", timeout=60.0)


async def test_an_address_ban_holds_on_every_route_whatever_key_is_sent(api):
    there, elsewhere = client_at(api, "203.0.113.7"), client_at(api, "198.51.100.2")
    first_key = {"X-Imagebot-User": "mallory-0123456789ab"}
    job = (await there.post("/api/jobs", json={"prompt": "a fox --steps 1"}, headers=first_key)).json()
    await api.wait(job["id"])
    # banning the keyless caller bans its address, and the keys seen from it
    response = await api.client.post("/api/admin/ban", json={"user": "web:anon-203.0.113.7", "reason": "flooding"},
                                     headers=ADMIN)
    assert response.json() == {"banned": "web:anon-203.0.113.7",
                               "covers": ["address:203.0.113.7", "web:mallory-0123456789ab"]}
    routes = [("POST", "/api/jobs"), ("POST", "/api/uploads"), ("POST", "/api/describe"), ("GET", "/api/history"),
              ("GET", f"/api/jobs/{job['id']}"), ("GET", f"/api/jobs/{job['id']}/events"),
              ("POST", f"/api/jobs/{job['id']}/reroll"), ("GET", "/api/models"), ("GET", "/sdapi/v1/sd-models"),
              ("POST", "/sdapi/v1/txt2img")]
    for method, path in routes:
        for headers in ({"X-Imagebot-User": "mallory-fresh-key-0123"}, {}):  # a new key, or none
            body = {"json": {"prompt": "a fox"}} if path in ("/api/jobs", "/sdapi/v1/txt2img") else {}
            response = await there.request(method, path, headers=headers, **body)
            assert response.status_code == 403 and "flooding" in response.text, (path, response.text)
    assert_error(await elsewhere.post("/api/jobs", json={"prompt": "a fox"}, headers=first_key), 403, "flooding")
    assert (await api.client.get("/api/history", headers=BOB)).status_code == 200  # everyone else is served
    assert (await elsewhere.get("/api/history", headers=ALICE)).status_code == 200
    lifted = await api.client.post("/api/admin/unban", json={"user": "address:203.0.113.7"}, headers=ADMIN)
    assert sorted(lifted.json()["covers"]) == ["web:anon-203.0.113.7", "web:mallory-0123456789ab"]
    assert (await there.get("/api/history", headers=first_key)).status_code == 200
    assert_error(await api.client.post("/api/admin/ban", json={"user": "address:nowhere", "reason": "x"},
                                       headers=ADMIN), 422, "not a network address")
    await there.aclose()
    await elsewhere.aclose()


async def test_wrong_admin_tokens_are_limited_per_address(api):
    wrong = {**ALICE, "Authorization": "Bearer wrong-token-0123456789"}
    for _ in range(10):
        assert (await api.client.get("/api/audit", headers=wrong)).status_code == 403
    assert_error(await api.client.get("/api/audit", headers=wrong), 429, "Too many wrong admin tokens")
    # the right token still works: someone sharing the admin's address cannot lock the admin out
    assert (await api.client.get("/api/audit", headers=ADMIN)).status_code == 200
    forged = {**wrong, "X-Forwarded-For": "203.0.113.9"}  # not believed: same address, still refused
    assert (await api.client.get("/api/audit", headers=forged)).status_code == 429
    assert ADMIN_TOKEN not in (await api.client.get("/api/audit", headers=wrong)).text


# --- 6. logs ----------------------------------------------------------------------------------------


async def test_client_keys_never_reach_the_log(api, caplog):
    """A client key is the caller's only credential: the log names the client by a short digest."""
    with caplog.at_level(logging.INFO):  # the most `serve --verbose` logs
        job = await api.submit("a fox --steps 1", ALICE)
        await api.wait(job["id"])
    text = "\n".join(record.getMessage() for record in caplog.records)
    key = ALICE["X-Imagebot-User"]
    assert "queued for web:key#" in text, text
    assert key not in text and key[:16] not in text

