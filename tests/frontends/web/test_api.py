"""The HTTP API end to end: a real store, registry, GPU worker thread and service on the tiny model,
driven by a real HTTP client (httpx) through the ASGI app.

Each test builds its own stack (the `api` and `make_api` fixtures of tests/helpers/api.py) and stops
it afterwards, cancelling whatever is still queued or running so no worker thread outlives its test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.helpers.api import ADMIN, ADMIN_TOKEN, ALICE, BOB, assert_error, png
from tests.helpers.infotext import FORGED_SETTINGS, read_back
from tests.helpers.models import add_pipeline_variant


def parse_sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        name = next(line[len("event: "):] for line in lines if line.startswith("event: "))
        data = "\n".join(line[len("data: "):] for line in lines if line.startswith("data: "))
        events.append((name, json.loads(data)))
    return events


async def read_events(client: httpx.AsyncClient, job_id: str, headers: dict[str, str] = ALICE,
                      timeout: float = 180.0) -> list[tuple[str, dict[str, Any]]]:
    async def read() -> list[tuple[str, dict[str, Any]]]:
        async with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return parse_sse((await response.aread()).decode("utf-8"))
    return await asyncio.wait_for(read(), timeout)


# --- submitting and results ------------------------------------------------------------------------


async def test_submit_poll_and_fetch_the_png(api):
    submitted = await api.submit({"prompt": "a lighthouse at dusk --steps 2 --seed 11"})
    assert re.fullmatch(r"[0-9a-f]{24}", submitted["id"]) and submitted["position"] == 1
    assert submitted["request"]["prompt"] == "a lighthouse at dusk"
    assert (submitted["request"]["steps"], submitted["request"]["seed"]) == (2, 11)

    job = await api.wait(submitted["id"])
    assert job["status"] == "done" and job["error"] is None
    assert job["images"] == [{"url": f"/api/images/{submitted['id']}-0.png", "seed": 11}]
    assert job["grid"] is None and job["finished_at"] >= job["created_at"]

    response = await api.client.get(job["images"][0]["url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.format == "PNG" and image.size == (64, 64)
    assert "a lighthouse at dusk" in image.text["parameters"]
    assert "Seed: 11" in image.text["parameters"]

    history = (await api.client.get("/api/history", headers=ALICE)).json()["jobs"]
    assert [j["id"] for j in history] == [submitted["id"]]
    assert (await api.client.get("/api/history", headers=BOB)).json()["jobs"] == []


async def test_a_prompt_over_several_lines_cannot_forge_the_pngs_parameters(api):
    """The `parameters` text (AUTOMATIC1111's) escapes nothing: a line break in the prompt would
    start a line of its own. Each is a space, as read back by our reader and by sd-parsers."""
    forged = FORGED_SETTINGS
    submitted = await api.submit({"prompt": f"a red circle\n{forged}\r\n--steps 2", "seed": 11,
                                  "negative_prompt": f"blurry\u2028{forged}"})
    assert submitted["request"]["prompt"] == f"a red circle {forged}"
    assert submitted["request"]["negative_prompt"] == f"blurry {forged}"
    job = await api.wait(submitted["id"])
    assert job["status"] == "done", job
    png = api.outputs / job["images"][0]["url"].rsplit("/", 1)[1]

    read = read_back(png)
    assert (read.prompt, read.negative_prompt) == (f"a red circle {forged}", f"blurry {forged}")
    assert (read.steps, read.seed, read.width, read.height) == (2, 11, 64, 64)


async def test_inline_flags_and_separate_fields_give_the_same_request(api):
    inline = await api.submit({"prompt": "a red fox --seed 5 --n 2 --steps 2"})
    fields = await api.submit({"prompt": "a red fox", "seed": 5, "count": 2, "steps": "2"}, BOB)
    keep = ("prompt", "seed", "count", "steps", "width", "height", "model", "guidance", "scheduler")
    assert {k: inline["request"][k] for k in keep} == {k: fields["request"][k] for k in keep}
    assert (inline["request"]["seed"], inline["request"]["count"]) == (5, 2)
    for submitted in (inline, fields):
        job = await api.wait(submitted["id"])
        assert job["status"] == "done"
        assert [(i["url"], i["seed"]) for i in job["images"]] == [
            (f"/api/images/{job['id']}-0.png", 5), (f"/api/images/{job['id']}-1.png", 6)]
        assert job["grid"] == f"/api/images/{job['id']}-grid.png"
        for image in job["images"]:
            assert (await api.client.get(image["url"])).status_code == 200
    # Same seeds and settings, alone in their jobs: the same pixels.
    first = (await api.client.get(f"/api/images/{inline['id']}-0.png")).content
    second = (await api.client.get(f"/api/images/{fields['id']}-0.png")).content
    assert Image.open(io.BytesIO(first)).tobytes() == Image.open(io.BytesIO(second)).tobytes()


async def test_the_same_setting_given_twice_differently_is_refused(api):
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a fox --seed 5", "seed": 6}, headers=ALICE),
                 400, "--seed was given twice; give it once.")
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a fox --ar 16:9", "size": "64x64"},
                                       headers=ALICE), 400, "Give either --size or --ar, not both.")
    # The same value both ways is not a conflict.
    assert (await api.client.post("/api/jobs", json={"prompt": "a fox --seed 5 --steps 1", "seed": 5},
                                  headers=ALICE)).status_code == 202


# --- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b'{"prompt": ', b"{prompt: 'x'}", b"\xff\xfe", b""])
async def test_malformed_json_is_a_clear_422(api, raw):
    response = await api.client.post("/api/jobs", content=raw,
                                     headers={**ALICE, "content-type": "application/json"})
    body = assert_error(response, 422, "Invalid request")
    assert body["key"] == "invalid_request"


@pytest.mark.parametrize("body, named", [
    ({"prompt": "a fox", "steps": [1]}, "steps"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": "a fox", "seed": {"x": 1}}, "seed"),
    ({"prompt": "a fox", "foo": 1}, "foo"),
    ({"negative_prompt": "blurry"}, "prompt"),
    ([{"prompt": "a fox"}], "body"),
    ("a fox", "body"),
])
async def test_wrong_types_unknown_fields_and_missing_prompt_are_422_naming_the_field(api, body, named):
    response = await api.client.post("/api/jobs", json=body, headers=ALICE)
    assert named in assert_error(response, 422, "Invalid request")["error"]


@pytest.mark.parametrize("body, status, message", [
    ({"prompt": ""}, 400, "The prompt is empty. Describe the picture"),
    ({"prompt": "   "}, 400, "The prompt is empty. Describe the picture"),
    ({"prompt": "--steps 3"}, 400, "The prompt is empty. Describe the picture"),
    ({"prompt": "a fox --steps 500"}, 400, "steps must be 1-50, got 500."),
    ({"prompt": "a fox", "steps": 500}, 400, "steps must be 1-50, got 500."),
    ({"prompt": "a fox", "steps": "many"}, 400, "steps must be a whole number, got 'many'."),
    ({"prompt": "a fox", "guidance": "NaN"}, 400, "guidance must be a number"),
    ({"prompt": "a fox --bogus 1"}, 400, "Unknown option --bogus."),
    ({"prompt": "a fox", "model": "nothere"}, 400, "There is no model 'nothere'. Available: demo."),
    ({"prompt": "a fox", "model": "../etc"}, 400, "is not a model name"),
    ({"prompt": "a fox", "scheduler": "warp"}, 400, "Unknown scheduler 'warp'."),
    ({"prompt": "a fox", "size": "4096x4096"}, 400, "Width and height must be 32-1024 pixels"),
    ({"prompt": "a fox", "refiner": 1.5}, 400, "0 (no refiner) up to 0.99"),
    ({"prompt": "a fox", "refiner": 0.7}, 400, "Model 'demo' has no refiner"),
    ({"prompt": "a red circle\nNegative prompt: injected\nSteps: 1, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 32x32"},
     400, 'The prompt may not contain "Negative prompt:". Put what to leave out of the picture after --no'),
    ({"prompt": "a fox", "negative_prompt": "Negative prompt: blurry"}, 400,
     'The negative prompt may not contain "Negative prompt:"'),
])
async def test_bad_values_are_400_with_the_catalogue_text(api, body, status, message):
    assert_error(await api.client.post("/api/jobs", json=body, headers=ALICE), status, message)
    assert await api.store.counts_by_status() == {}


async def test_a_refiner_model_is_400_naming_its_base_and_the_refiner_field_reaches_the_request(
        make_api, models_dir, tiny_sdxl_dir, tiny_sdxl_refiner_dir):
    add_pipeline_variant(models_dir, "xl", tiny_sdxl_dir, 'kind = "pipeline"\nrefiner = "refiner"\n')
    add_pipeline_variant(models_dir, "refiner", tiny_sdxl_refiner_dir)
    api = await make_api(limits={"max_steps": 500})
    response = await api.client.post("/api/jobs", json={"prompt": "a fox", "model": "refiner"}, headers=ALICE)
    assert_error(response, 400, "'refiner' is a refiner", "--model xl")
    await api.hold_worker()  # nothing runs: only what was queued is looked at
    queued = await api.submit({"prompt": "a fox", "model": "xl", "refiner": 0.6})
    assert (queued["request"]["refiner"], queued["request"]["refiner_switch"]) == ("refiner", 0.6)
    queued = await api.submit({"prompt": "a fox", "model": "xl", "refiner": "off"})
    assert (queued["request"]["refiner"], queued["request"]["refiner_switch"]) == (None, None)
    queued = await api.submit({"prompt": "a fox", "model": "xl"})
    assert (queued["request"]["refiner"], queued["request"]["refiner_switch"]) == ("refiner", 0.8)


async def test_json_nan_and_infinity_are_refused(api):
    for raw in (b'{"prompt": "a fox", "guidance": NaN}', b'{"prompt": "a fox", "guidance": 1e400}'):
        response = await api.client.post("/api/jobs", content=raw,
                                         headers={**ALICE, "content-type": "application/json"})
        assert_error(response, 400, "guidance must be a number")


@pytest.mark.parametrize("field", ["steps", "count", "seed", "guidance"])
async def test_json_booleans_are_not_numbers(api, field):
    response = await api.client.post("/api/jobs", json={"prompt": "a fox", field: True}, headers=ALICE)
    assert response.status_code in (400, 422), response.text


async def test_a_body_over_64_kib_is_413(api):
    body = json.dumps({"prompt": "a fox", "negative_prompt": "x" * (65 * 1024)}).encode()
    response = await api.client.post("/api/jobs", content=body, headers={**ALICE, "content-type": "application/json"})
    assert_error(response, 413, "64 KiB")
    assert await api.store.counts_by_status() == {}


async def test_a_chunked_body_over_64_kib_is_413_too(api):
    body = json.dumps({"prompt": "a fox", "negative_prompt": "x" * (200 * 1024)}).encode()

    async def chunks():
        for start in range(0, len(body), 16 * 1024):
            yield body[start:start + 16 * 1024]

    response = await api.client.post("/api/jobs", content=chunks(),
                                     headers={**ALICE, "content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "64 KiB")


async def test_vietnamese_messages_for_accept_language_vi(api):
    for locale in ("vi", "vi-VN", "vi_VN"):
        response = await api.client.post("/api/jobs", json={"prompt": ""}, headers={**ALICE, "Accept-Language": locale})
        assert_error(response, 400, "Câu mô tả đang trống")
    response = await api.client.get("/api/jobs/424242", headers={"Accept-Language": "vi"})
    assert_error(response, 404, "Không có yêu cầu #424242.")
    response = await api.client.post("/api/jobs", json={"prompt": ""}, headers={**ALICE, "Accept-Language": "fr"})
    assert_error(response, 400, "The prompt is empty.")


@pytest.mark.parametrize("header", ["vi,en;q=0.8", "vi;q=0.9, en;q=0.5"])
async def test_accept_language_lists_as_browsers_send_them(api, header):
    response = await api.client.post("/api/jobs", json={"prompt": ""}, headers={**ALICE, "Accept-Language": header})
    assert_error(response, 400, "Câu mô tả đang trống")


# --- unknown and malformed job ids ----------------------------------------------------------------------


async def test_unknown_job_ids_are_404_everywhere(api):
    for method, path in [("GET", "/api/jobs/9999"), ("DELETE", "/api/jobs/9999"), ("GET", "/api/jobs/9999/events"),
                         ("GET", "/api/jobs/9999/preview"), ("GET", "/api/jobs/0"), ("GET", "/api/jobs/-3")]:
        response = await api.client.request(method, path, headers=ALICE)
        assert_error(response, 404, "There is no job #")
        assert response.json()["key"] == "job_not_found"


async def test_job_ids_that_are_not_public_ids_are_404(api):
    for method, path in [("GET", "/api/jobs/abc"), ("DELETE", "/api/jobs/abc"), ("GET", "/api/jobs/1.5/events"),
                         ("GET", "/api/jobs/x/preview"), ("GET", "/api/jobs/%20"), ("GET", "/api/jobs/" + "0" * 24)]:
        response = await api.client.request(method, path, headers=ALICE)
        assert_error(response, 404, "There is no job")


async def test_a_job_id_beyond_64_bits_is_404_not_500(api):
    big = 2**64
    for method, path in [("GET", f"/api/jobs/{big}"), ("DELETE", f"/api/jobs/{big}"),
                         ("GET", f"/api/jobs/{big}/events"), ("GET", f"/api/jobs/{big}/preview")]:
        response = await api.client.request(method, path, headers=ALICE)
        assert response.status_code in (404, 422), f"{method} {path}: {response.status_code} {response.text}"


# --- images: only files inside the outputs folder ------------------------------------------------------


async def test_image_urls_cannot_reach_outside_the_outputs_folder(api, tmp_path):
    outputs = api.outputs
    outputs.mkdir(parents=True, exist_ok=True)
    state = outputs.parent
    marker = "TOP-SECRET-CONTENT"
    (state / "config.toml").write_text(f"token = '{marker}'\n")
    (state / "secret.png").write_text(marker)
    outside = tmp_path / "outside.png"
    outside.write_text(marker)
    os.symlink(outside, outputs / "planted.png")
    os.symlink(state / "config.toml", outputs / "config.png")
    os.symlink(state, outputs / "up.png")
    (outputs / "real.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a file that may be served

    paths = [
        "/api/images/..%2Fconfig.toml", "/api/images/..%2Fsecret.png", "/api/images/%2e%2e%2fsecret.png",
        "/api/images/%2e%2e/%2e%2e/etc/passwd", "/api/images/../../etc/passwd", "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/images/%2Fetc%2Fpasswd", "/api/images//etc/passwd", f"/api/images/{outside}",
        f"/api/images/{str(outside).replace('/', '%2F')}", "/api/images/..\\secret.png", "/api/images/..%5Csecret.png",
        "/api/images/config.toml", "/api/images/real", "/api/images/real.PNG.txt", "/api/images/.hidden.png",
        "/api/images/planted.png", "/api/images/config.png", "/api/images/up.png", "/api/images/up.png%2Fsecret.png",
        "/api/images/real.png%00.txt", "/static/..%2F..%2F..%2Fconfig.py", "/static/%2e%2e/api.py",
    ]
    for path in paths:
        response = await api.client.get(path)
        assert response.status_code == 404, (path, response.status_code, response.text[:200])
        assert marker not in response.text and "root:" not in response.text, path
    assert (await api.client.get("/api/images/real.png")).status_code == 200


# --- live events ---------------------------------------------------------------------------------------


async def test_events_stream_state_first_then_progress_then_done(make_api):
    api = await make_api(limits={"max_steps": 500})
    holder = await api.hold_worker()
    submitted = await api.submit("a cat --steps 3 --seed 2")
    reader = asyncio.create_task(read_events(api.client, submitted["id"]))
    async def subscribed() -> None:
        while not api.service.events.watching((await api.service.job(submitted["id"])).id):
            await asyncio.sleep(0.01)
    await asyncio.wait_for(subscribed(), 60)
    await api.release(holder)
    events = await reader
    names = [name for name, _ in events]
    assert names[0] == "state" and events[0][1]["id"] == submitted["id"]
    assert events[0][1]["status"] == "queued" and events[0][1]["position"] == 1
    assert names[-1] == "done" and names.count("done") == 1
    assert "started" in names and names.index("started") < names.index("progress")
    progress = [data for name, data in events if name == "progress"]
    assert [(p["step"], p["total"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    assert all(p["job"] == submitted["id"] for p in progress)
    done = events[-1][1]
    assert done["status"] == "done"
    assert done["images"] == [{"url": f"/api/images/{submitted['id']}-0.png", "seed": 2}]
    assert (await api.client.get(done["images"][0]["url"])).status_code == 200


async def test_events_keep_flowing_after_keep_alives(make_api, monkeypatch):
    from bot.frontends.web.routes import events

    monkeypatch.setattr(events, "KEEPALIVE_SECONDS", 0.05)
    api = await make_api(limits={"max_steps": 500})
    holder = await api.hold_worker()
    submitted = await api.submit("a cat --steps 2")

    async def read() -> str:
        async with api.client.stream("GET", f"/api/jobs/{submitted['id']}/events", headers=ALICE) as response:
            return (await response.aread()).decode("utf-8")

    reader = asyncio.create_task(asyncio.wait_for(read(), 180))
    while not api.service.events.watching((await api.service.job(submitted["id"])).id):
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # several keep-alive periods with nothing to say
    await api.release(holder)
    text = await reader
    assert text.count(": keep-alive") >= 2
    names = [name for name, _ in parse_sse(text)]
    assert names[0] == "state" and names[-1] == "done" and "progress" in names


async def test_events_of_a_finished_job_are_its_state_alone(api):
    submitted = await api.submit("a cat --steps 1")
    await api.wait(submitted["id"])
    events = await read_events(api.client, submitted["id"])
    assert [name for name, _ in events] == ["state"]
    assert events[0][1]["status"] == "done" and len(events[0][1]["images"]) == 1


async def test_events_do_not_miss_a_job_that_ends_while_the_stream_opens(make_api, monkeypatch):
    api = await make_api()
    submitted = await api.submit("a cat --steps 2")
    original = api.service.status

    async def slow_status(job_id):  # the job finishes between the status read and the subscription
        view = await original(job_id)
        while not (await api.service.job(job_id)).finished:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        return view

    monkeypatch.setattr(api.service, "status", slow_status)
    reader = asyncio.create_task(read_events(api.client, submitted["id"]))
    await api.wait(submitted["id"])
    try:
        events = await asyncio.wait_for(reader, 10.0)  # the job is done: the stream must end now
    except asyncio.TimeoutError:
        pytest.fail("the event stream never sent the final event")
    assert events[0][0] == "state" and events[-1][0] == "done"


# --- cancelling ------------------------------------------------------------------------------------------


async def test_cancel_a_queued_job_and_it_never_runs(make_api):
    api = await make_api(limits={"max_steps": 500})
    holder = await api.hold_worker()
    queued = await api.submit("a cat --steps 2", BOB)
    assert (await api.job(queued["id"]))["status"] == "queued"
    response = await api.client.delete(f"/api/jobs/{queued['id']}", headers=BOB)
    assert response.status_code == 200 and response.json() == {"id": queued["id"], "status": "cancelled"}
    assert (await api.job(queued["id"]))["status"] == "cancelled"
    assert_error(await api.client.delete(f"/api/jobs/{queued['id']}", headers=BOB), 400, "already finished")
    await api.release(holder)
    later = await api.submit("a dog --steps 1", BOB)  # the worker is free and runs what is queued
    assert (await api.wait(later["id"]))["status"] == "done"
    row = await api.service.job(queued["id"])
    assert (row.status, row.started_at, row.attempts, row.images) == ("cancelled", None, 0, ())
    assert not list(api.outputs.glob(f"{queued['id']}-*"))
    assert api.executor.metrics()["images"] == 1  # only `later` was ever generated


async def test_cancel_a_running_job(make_api):
    api = await make_api(limits={"max_steps": 500})
    running = await api.submit("a slow one --steps 300 --n 2")
    after = await api.submit("a dog --steps 2", BOB)
    job = await api.wait_running(running["id"])
    assert job["progress"]["total"] == 300
    preview = await api.client.get(f"/api/jobs/{running['id']}/preview")
    assert preview.status_code == 200 and preview.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(preview.content)).format == "JPEG"

    response = await api.client.delete(f"/api/jobs/{running['id']}", headers=ALICE)
    assert response.status_code == 200 and response.json() == {"id": running["id"], "status": "cancelling"}
    job = await api.wait(running["id"])
    assert job["status"] == "cancelled" and job["images"] == []
    assert not list(api.outputs.glob(f"{running['id']}-*"))
    done = await api.wait(after["id"])
    assert done["status"] == "done"  # the queue moves on
    # a finished job's previews are gone; a request for one still on its way is no error
    assert (await api.client.get(f"/api/jobs/{running['id']}/preview")).status_code == 204
    moved = await api.client.get(f"/api/jobs/{after['id']}/preview")
    assert (moved.status_code, moved.headers["location"]) == (303, done["images"][0]["url"])


async def test_only_the_owner_or_an_admin_cancels(make_api):
    api = await make_api(limits={"max_steps": 500})
    blocker = {"id": await api.hold_worker()}
    mine = await api.submit("a cat --steps 2", ALICE)
    assert_error(await api.client.delete(f"/api/jobs/{mine['id']}", headers=BOB), 403, "belongs to someone else")
    assert_error(await api.client.delete(f"/api/jobs/{mine['id']}", headers={}), 403, "belongs to someone else")
    wrong_admin = {**BOB, "Authorization": "Bearer not-the-token"}
    assert_error(await api.client.delete(f"/api/jobs/{mine['id']}", headers=wrong_admin), 403)
    assert (await api.job(mine["id"]))["status"] == "queued"
    response = await api.client.delete(f"/api/jobs/{mine['id']}", headers=ADMIN)
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    response = await api.client.delete(f"/api/jobs/{blocker['id']}", headers=ADMIN)  # running, someone else's
    assert response.status_code == 200 and response.json()["status"] == "cancelling"
    assert (await api.wait(blocker["id"]))["status"] == "cancelled"


# --- admin -----------------------------------------------------------------------------------------------


async def test_set_the_default_model(make_api, models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "other", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 2\n')
    api = await make_api()
    body = {"name": "other"}
    assert_error(await api.client.put("/api/models/default", json=body, headers=ALICE), 401, "IMAGEBOT_ADMIN_TOKEN")
    assert_error(await api.client.put("/api/models/default", json=body,
                                      headers={**ALICE, "Authorization": "Bearer wrong"}), 403, "Only admins")
    assert_error(await api.client.put("/api/models/default", json=body,
                                      headers={**ALICE, "Authorization": f"Basic {ADMIN_TOKEN}"}), 401)
    assert (await api.submit("a cat --steps 1"))["request"]["model"] == "demo"

    response = await api.client.put("/api/models/default", json=body, headers=ADMIN)
    assert response.status_code == 200 and response.json() == {"default": "other"}
    submitted = await api.submit("a cat")
    assert (submitted["request"]["model"], submitted["request"]["steps"]) == ("other", 2)
    assert (await api.wait(submitted["id"]))["status"] == "done"
    models = {m["name"]: m for m in (await api.client.get("/api/models")).json()["models"]}
    assert models["other"]["default"] is True and models["demo"]["default"] is False

    response = await api.client.put("/api/models/default", json={"name": "nothere"}, headers=ADMIN)
    assert_error(response, 400, "There is no model 'nothere'. Available: demo, other.")
    assert_error(await api.client.put("/api/models/default", json={"name": "../x"}, headers=ADMIN), 400)
    assert_error(await api.client.put("/api/models/default", json={"nom": "demo"}, headers=ADMIN), 422, "nom")
    assert (await api.client.get("/api/models")).json()["default"] == "other"


async def test_an_unsupported_scope_is_a_400_not_only_admins(api):
    response = await api.client.put("/api/models/default", json={"name": "demo", "scope": "chat"}, headers=ADMIN)
    assert response.status_code in (400, 422), response.text
    assert "Only admins" not in response.json()["error"]


async def test_admin_calls_without_a_configured_token(make_api):
    api = await make_api(admin_token=None)
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer anything"}):
        assert_error(await api.client.put("/api/models/default", json={"name": "demo"}, headers=headers),
                     403, "IMAGEBOT_ADMIN_TOKEN")
        assert_error(await api.client.post("/api/models/reload", headers=headers), 403, "IMAGEBOT_ADMIN_TOKEN")


async def test_reload_picks_up_a_new_variant(make_api, models_dir, tiny_pipeline_dir):
    api = await make_api(models={"rescan_seconds": 3600.0})
    names = [m["name"] for m in (await api.client.get("/api/models")).json()["models"]]
    assert names == ["demo"]
    add_pipeline_variant(models_dir, "fresh", tiny_pipeline_dir)
    assert_error(await api.client.post("/api/models/reload", headers=ALICE), 401)
    response = await api.client.post("/api/models/reload", headers=ADMIN)
    assert response.status_code == 200
    assert response.json() == {"added": ["fresh"], "changed": [], "removed": []}
    names = [m["name"] for m in (await api.client.get("/api/models")).json()["models"]]
    assert sorted(names) == ["demo", "fresh"]
    assert (await api.submit("a cat --model fresh --steps 1"))["request"]["model"] == "fresh"


async def test_a_full_disk_is_507_and_healthz_says_503_until_space_is_back(api):
    async with api.store.db.execute("PRAGMA page_count") as cursor:
        (pages,) = await cursor.fetchone()
    await api.store.db.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now refuses to grow: SQLITE_FULL
    accepted = []
    for n in range(1000):
        response = await api.client.post("/api/jobs", json={"prompt": f"a cat {n} {'x' * 400} --steps 30"},
                                         headers={"X-Imagebot-User": f"user-{n}-0123456789abcdef"})
        if response.status_code != 202:
            break
        accepted.append(response.json()["id"])
    assert_error(response, 507, "disk is full")
    assert response.json()["key"] == "storage_full"
    health = await api.client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "unavailable"
    assert any("cannot be written" in problem for problem in health.json()["problems"])
    assert accepted and (await api.client.get(f"/api/jobs/{accepted[-1]}")).status_code == 200  # still served
    await api.store.db.execute("PRAGMA max_page_count = 1073741823")
    await asyncio.sleep(1.1)  # /healthz tries a write at most once a second
    health = await api.client.get("/healthz")
    assert health.status_code == 200 and health.json()["problems"] == []
    await api.submit("a dog --steps 1")


async def test_models_health_metrics_and_schema(api):
    before = (await api.client.get("/api/models")).json()
    assert before["default"] == "demo"
    [demo] = before["models"]
    assert {k: demo[k] for k in ("name", "kind", "status", "default", "loaded")} == {
        "name": "demo", "kind": "pipeline", "status": "ready", "default": True, "loaded": False}

    health = await api.client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["queue_depth"] == 0

    for prompt in ("a cat --steps 2", "a dog --steps 2 --n 2"):
        await api.wait((await api.submit(prompt))["id"])
    [demo] = (await api.client.get("/api/models")).json()["models"]
    assert demo["loaded"] is True

    response = await api.client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert re.search(r"^imagebot_queue_depth 0$", text, re.M)
    assert re.search(r'^imagebot_jobs\{status="done"\} 2$', text, re.M)
    assert re.search(r'^imagebot_jobs\{status="queued"\} 0$', text, re.M)
    per_step = re.search(r'^imagebot_seconds_per_step\{model="demo"\} ([0-9.e-]+)$', text, re.M)
    assert per_step and float(per_step.group(1)) > 0
    assert re.search(r'^imagebot_batch_images_total\{images="1"\} 1$', text, re.M)
    assert re.search(r'^imagebot_batch_images_total\{images="2"\} 1$', text, re.M)
    assert re.search(r"^imagebot_model_loads_total 1$", text, re.M)
    assert re.search(r"^imagebot_images_total 3$", text, re.M)
    for line in text.splitlines():  # every line is a comment or `name{labels} number`
        assert line.startswith("# ") or re.fullmatch(r'[a-z_]+(\{[a-z]+="[^"]*"\})? -?[0-9.e+-]+', line), line

    schema = (await api.client.get("/openapi.json")).json()
    assert "/api/jobs" in schema["paths"] and "post" in schema["paths"]["/api/jobs"]
    assert "/api/jobs/{job_id}" in schema["paths"]


# --- quotas ----------------------------------------------------------------------------------------------


async def test_queue_quota_per_user_and_admins_are_exempt(make_api):
    api = await make_api(queue={"max_queued_per_user": 2}, limits={"max_steps": 500})
    await api.submit("a slow one --steps 200")
    await api.submit("a slow one --steps 200")
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a third"}, headers=ALICE), 429,
                 "Jobs you have waiting: 2; the limit is 2.")
    assert (await api.client.post("/api/jobs", json={"prompt": "a cat"}, headers=BOB)).status_code == 202
    for _ in range(3):
        assert (await api.client.post("/api/jobs", json={"prompt": "a cat"}, headers=ADMIN)).status_code == 202
    response = await api.client.post("/api/jobs", json={"prompt": ""}, headers={**ALICE, "Accept-Language": "vi"})
    assert response.status_code == 400  # the prompt is checked before the quota


async def test_concurrent_submissions_cannot_exceed_the_queue_quota(make_api):
    api = await make_api(queue={"max_queued_per_user": 2}, limits={"max_steps": 500})
    responses = await asyncio.gather(*[
        api.client.post("/api/jobs", json={"prompt": "a slow one --steps 200"}, headers=ALICE) for _ in range(5)])
    assert sorted(r.status_code for r in responses) == [202, 202, 429, 429, 429]


async def test_jobs_per_hour_limit(make_api):
    api = await make_api(queue={"max_jobs_per_hour": 2})
    for _ in range(2):
        await api.wait((await api.submit("a cat --steps 1"))["id"])
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a cat"}, headers=ALICE), 429,
                 "You have made 2 requests in the last hour; the limit is 2.")
    response = await api.client.post("/api/jobs", json={"prompt": "a cat"}, headers={**ALICE, "Accept-Language": "vi"})
    assert_error(response, 429, "Bạn đã gửi 2 yêu cầu")
    assert (await api.client.post("/api/jobs", json={"prompt": "a cat --steps 1"}, headers=BOB)).status_code == 202
    assert (await api.client.post("/api/jobs", json={"prompt": "a cat --steps 1"}, headers=ADMIN)).status_code == 202


# --- fairness and batching ---------------------------------------------------------------------------------


async def test_fair_turns_and_batches_through_the_api(make_api):
    api = await make_api(engine={"max_batch": 4}, limits={"max_steps": 500})
    holder = await api.hold_worker()
    a_jobs = [(await api.submit(f"alice {i} --steps 2"))["id"] for i in range(6)]
    b_job = (await api.submit("bob's only one --steps 2", BOB))["id"]
    d_jobs = [(await api.submit(f"dave {i} --steps 3", {"X-Imagebot-User": "dave-0123456789abcdef"}))["id"] for i in range(2)]
    await api.release(holder)  # everything was queued before the worker freed
    for job_id in [*a_jobs, b_job, *d_jobs]:
        assert (await api.wait(job_id))["status"] == "done"
    rows = {job_id: await api.service.job(job_id) for job_id in [*a_jobs, b_job, *d_jobs]}
    # Jobs of one pipeline call are claimed together: same started_at.
    batches: dict[float, list[str]] = {}
    for job_id, row in rows.items():
        batches.setdefault(row.started_at, []).append(job_id)
    order = [sorted(batches[at]) for at in sorted(batches)]
    b_batch = next(i for i, batch in enumerate(order) if b_job in batch)
    assert b_batch <= 1, order  # Bob's single job waits for at most one batch of Alice's six
    assert any(len({rows[j].origin.user_id for j in batch}) > 1 for batch in order), order
    for batch in order:  # different --steps never share a pipeline call
        assert len({rows[j].request.steps for j in batch}) == 1, order
        assert sum(rows[j].request.count for j in batch) <= 4
    sizes = api.executor.metrics()["batch_sizes"]
    assert max(sizes) > 1 and sum(sizes.values()) == len(order) + 1, sizes


# --- derived jobs ---------------------------------------------------------------------------------------------


async def test_reroll_keeps_the_settings_with_a_new_seed(api):
    source = await api.submit("a cat --steps 1 --seed 3 --size 32x32")
    await api.wait(source["id"])
    response = await api.client.post(f"/api/jobs/{source['id']}/reroll", headers=ALICE)
    assert response.status_code == 202, response.text
    reroll = response.json()["request"]
    assert {k: reroll[k] for k in ("prompt", "steps", "width", "height")} == {
        "prompt": "a cat", "steps": 1, "width": 32, "height": 32}
    assert (await api.wait(response.json()["id"]))["status"] == "done"
    assert_error(await api.client.post(f"/api/jobs/{source['id']}/explode", headers=ALICE), 404)
    assert_error(await api.client.post("/api/jobs/9999/reroll", headers=ALICE), 404, "There is no job #9999.")


# --- image prompts and masks -----------------------------------------------------------------------------


async def test_an_upload_and_a_mask_repaint_only_the_masked_region(api):
    import numpy as np

    source = Image.new("RGB", (64, 64), (200, 40, 40))
    source.paste((30, 60, 220), (32, 0, 64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    uploaded = await api.client.post("/api/uploads", content=png(source), headers={**ALICE, "Content-Type": "image/png"})
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["width"] == 64 and re.fullmatch(r"[0-9a-f]{32}", uploaded.json()["handle"])
    masked = await api.client.post("/api/uploads?kind=mask", content=png(mask),
                                   headers={**ALICE, "Content-Type": "image/png"})
    assert masked.status_code == 201 and masked.json()["kind"] == "mask"

    job = await api.submit({"prompt": "a cat --steps 2 --seed 4", "image": uploaded.json()["handle"],
                            "mask": masked.json()["handle"], "strength": 0.9})
    request = job["request"]
    assert request["strength"] == 0.9 and (request["width"], request["height"]) == (64, 64)
    assert "/" not in request["init_image"] and "/" not in request["mask_image"]  # names only, no server paths
    done = await api.wait(job["id"])
    assert done["status"] == "done", done
    result = await api.client.get(done["images"][0]["url"], headers=ALICE)
    drawn = np.asarray(Image.open(io.BytesIO(result.content)).convert("RGB"), dtype=float)
    inside = np.asarray(mask) > 0
    difference = np.abs(drawn - np.asarray(source, dtype=float))
    assert difference[~inside].max() <= 2 and difference[inside].mean() > 20


async def test_bad_uploads_are_refused_with_what_is_allowed(make_api):
    api = await make_api(limits={"max_upload_bytes": 100_000, "max_upload_pixels": 256 * 256})
    headers = {**ALICE, "Content-Type": "image/png"}
    assert_error(await api.client.post("/api/uploads", content=b"x" * 100_001, headers=headers), 413, "97 KiB")
    bomb = png(Image.new("L", (2000, 2000)))  # 4 megapixels of zeros in a few KiB
    assert len(bomb) < 100_000
    assert_error(await api.client.post("/api/uploads", content=bomb, headers=headers), 413,
                 "2000x2000 pixels; the limit is 65536")
    assert_error(await api.client.post("/api/uploads", content=b"GIF89a broken", headers=headers), 415,
                 "Send PNG, JPEG")
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a cat", "image": "0" * 32}, headers=ALICE), 404,
                 "unknown or has expired")
    assert_error(await api.client.post("/api/jobs", json={"prompt": "a cat", "image": "../../etc/passwd"},
                                       headers=ALICE), 404, "unknown or has expired")
    assert await api.store.counts_by_status() == {}


async def test_describe_suggests_prompts_for_a_picture(make_api, tmp_path):
    from tests.helpers.blip import WORDS, save_tiny_blip

    api = await make_api(describe={"model": str(save_tiny_blip(tmp_path / "blip")), "device": "cpu"})
    picture = png(Image.new("RGB", (48, 48), "white"))
    answer = await api.client.post("/api/describe", content=picture, headers={**ALICE, "Content-Type": "image/png"})
    assert answer.status_code == 200, answer.text
    prompts = answer.json()["prompts"]
    assert 1 <= len(prompts) <= 4 and all(set(p.split()) <= set(WORDS) for p in prompts)
    handle = (await api.client.post("/api/uploads", content=picture,
                                    headers={**ALICE, "Content-Type": "image/png"})).json()["handle"]
    assert (await api.client.post(f"/api/describe?image={handle}", headers=ALICE)).json()["prompts"] == prompts


async def test_describe_without_a_model_tells_only_an_admin_how_to_add_one(api):
    picture = png(Image.new("RGB", (8, 8)))
    answer = await api.client.post("/api/describe", content=picture, headers={**ALICE, "Content-Type": "image/png"})
    assert_error(answer, 501, "not set up on this server")
    assert "huggingface-cli" not in answer.text and "config.toml" not in answer.text
    answer = await api.client.post("/api/describe", content=picture, headers={**ADMIN, "Content-Type": "image/png"})
    assert_error(answer, 501, "[describe] model", "huggingface-cli download")
