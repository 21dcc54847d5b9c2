"""The AUTOMATIC1111-compatible API end to end: `imagebot serve`'s app on a real port (uvicorn, in
this test's event loop) with a real store, GPU worker thread and service on the tiny model, driven
by the real `webuiapi` client from PyPI (in a thread: it is synchronous) and by the requests Open
WebUI's AUTOMATIC1111 engine sends.

What each answer says is checked against the job itself: the images and their seeds against the
PNG files the worker wrote for it, and `info.infotexts` against those files' `parameters` chunks.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import uvicorn
from PIL import Image

from bot.config import Config, Secrets
from bot.core.service import Service
from bot.frontends.web.api import create_app
from tests.helpers.models import add_pipeline_variant
from tests.helpers.ports import free_port
from tests.helpers.service import start_service, stop_service

webuiapi = pytest.importorskip("webuiapi")

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
PASSWORD = "a long enough password"
ACCOUNTS = {"web": {"auth": "password"}}
SMALL = {"width": 64, "height": 64, "steps": 2}  # the tiny model's native size, few steps
WAIT = 180.0  # seconds any one wait may take on a busy CPU; never a timing assertion


@dataclass
class Server:
    """The app on 127.0.0.1:port, its stack, and an httpx client for raw requests."""

    service: Service
    config: Config
    port: int
    client: httpx.AsyncClient

    async def webui(self, user: str | None = None) -> Any:
        """A webuiapi client; `user` signs in with HTTP Basic auth (the account's password). Made
        in a thread: it calls the server as it is made."""
        def make() -> Any:
            api = webuiapi.WebUIApi(host="127.0.0.1", port=self.port, sampler="Euler a", steps=2)
            if user is not None:
                api.set_auth(user, PASSWORD)
            return api
        return await asyncio.to_thread(make)

    async def job_of(self, result: Any):
        return await self.service.job(result.info["imagebot_job"])

    def png_parameters(self, file: str) -> str:
        with Image.open(self.config.storage.outputs_path() / file) as image:
            return image.text["parameters"]


@pytest.fixture
async def make_server(tmp_path, models_dir, tiny_pipeline_dir):
    """make_server(admin_token=..., users=True, **config sections) -> a running server."""
    running: list[tuple[uvicorn.Server, asyncio.Task, Server]] = []
    add_pipeline_variant(models_dir, "other", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 3\n')

    async def make(admin_token: str | None = ADMIN_TOKEN, users: bool = False, **sections: dict[str, Any]) -> Server:
        config, store, executor, service = await start_service(tmp_path / f"state{len(running)}", models_dir,
                                                                **sections)
        if users:
            for name, admin in (("alice", False), ("bob", False), ("root", True)):
                await service.accounts.add(name, PASSWORD, is_admin=admin)
        app = create_app(service, config, Secrets(admin_token=admin_token))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                               lifespan="off", timeout_graceful_shutdown=10))
        task = asyncio.create_task(server.serve())
        await wait_for(lambda: server.started, "the server to start")
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT)
        stack = Server(service, config, port, client)
        running.append((server, task, stack))
        stack.store = store  # type: ignore[attr-defined]
        return stack

    yield make
    for server, task, stack in running:
        await stack.client.aclose()
        await stop_service(stack.service, stack.store)  # cancels what is left: waiting calls answer
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def wait_for(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Check until `check()` (or, for an async check, what it returns awaited) holds: a state,
    never a duration."""
    async def poll():
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await asyncio.sleep(0.02)
    try:
        return await asyncio.wait_for(poll(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def basic(user: str, password: str = PASSWORD) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def assert_a1111_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    """A1111's error shape: {"error": a type name, "detail": the text, "body", "errors"}."""
    assert response.status_code == status, response.text
    body = response.json()
    assert {"error", "detail", "body", "errors"} <= set(body), body
    assert body["error"] in ("HTTPException", "RequestValidationError"), body
    for fragment in fragments:
        assert fragment in body["detail"], (fragment, body)
    return body


# --- webuiapi ------------------------------------------------------------------------------------------


async def test_txt2img_batch_of_two_answers_the_jobs_images_seeds_and_infotexts(make_server):
    server = await make_server()
    api = await server.webui()
    result = await asyncio.to_thread(api.txt2img, prompt="a red circle on a blue background", seed=1234,
                                     batch_size=2, cfg_scale=6.5, negative_prompt="blurry", **SMALL)
    job = await server.job_of(result)
    assert job.status == "done" and job.origin.user_key == "web:anon-127.0.0.1"  # the anonymous caller's key
    assert job.request.count == 2 and job.request.scheduler == "euler_a" and job.request.guidance == 6.5

    assert len(result.images) == 2 and all(image.size == (64, 64) for image in result.images)
    info = result.info
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235] == [image.seed for image in job.images]
    assert info["sampler_name"] == "Euler a" and info["steps"] == 2 and info["cfg_scale"] == 6.5
    assert info["width"] == info["height"] == 64 and info["sd_model_name"] == "demo"
    assert info["negative_prompt"] == "blurry" and info["all_prompts"] == ["a red circle on a blue background"] * 2
    stored = [server.png_parameters(image.file) for image in job.images]
    assert info["infotexts"] == stored
    assert "Seed: 1234" in stored[0] and "Seed: 1235" in stored[1] and "Sampler: Euler a" in stored[0]
    # the images sent are the job's files, their parameters inside, as A1111 sends them
    assert [image.info["parameters"] for image in result.images] == stored
    for sent, image in zip(result.images, job.images):
        with Image.open(server.config.storage.outputs_path() / image.file) as file:
            assert list(sent.convert("RGB").getdata()) == list(file.convert("RGB").getdata())
    assert result.parameters["prompt"] == "a red circle on a blue background" and result.parameters["batch_size"] == 2


async def test_img2img_starts_from_the_picture_sent(make_server):
    server = await make_server()
    api = await server.webui()
    source = Image.new("RGB", (64, 64), (200, 30, 30))
    result = await asyncio.to_thread(api.img2img, images=[source], prompt="a red square", denoising_strength=0.5,
                                     seed=7, **SMALL)
    job = await server.job_of(result)
    assert job.status == "done" and job.request.init_image is not None and job.request.strength == 0.5
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    assert result.info["denoising_strength"] == 0.5 and result.info["all_seeds"] == [7]
    assert result.info["infotexts"] == [server.png_parameters(job.images[0].file)]
    assert "Denoising strength: 0.5" in result.info["infotexts"][0]
    assert "init_images" not in result.parameters  # as A1111: not echoed unless include_init_images


async def test_models_samplers_and_the_model_a_request_names(make_server):
    server = await make_server()
    api = await server.webui()
    models = await asyncio.to_thread(api.get_sd_models)
    assert sorted(model["title"] for model in models) == ["demo", "other"]
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert (await asyncio.to_thread(api.get_options))["sd_model_checkpoint"] == "demo"
    assert await asyncio.to_thread(api.util_get_current_model) == "demo"
    names = await asyncio.to_thread(api.util_get_sampler_names)
    assert {"Euler a", "Euler", "DPM++ 2M", "DPM++ 2M Karras", "DDIM", "UniPC"} <= set(names)
    assert {"automatic", "karras"} <= set(await asyncio.to_thread(api.util_get_scheduler_names))
    # override_settings picks the model of this request only
    result = await asyncio.to_thread(api.txt2img, prompt="a green square", sampler_name="DPM++ 2M",
                                     scheduler="Karras", override_settings={"sd_model_checkpoint": "other"}, **SMALL)
    job = await server.job_of(result)
    assert job.request.model == "other" and job.request.scheduler == "dpm++_karras"
    assert result.info["sd_model_name"] == "other" and "Schedule type: Karras" in result.info["infotexts"][0]
    assert (await asyncio.to_thread(api.get_options))["sd_model_checkpoint"] == "demo"


async def test_switching_the_default_model_is_for_admins_only(make_server):
    server = await make_server(users=True, **ACCOUNTS)
    alice, root = await server.webui("alice"), await server.webui("root")
    refused = await asyncio.to_thread(alice.set_options, {"sd_model_checkpoint": "other"})
    assert refused["error"] == "HTTPException" and refused["detail"] == "Only admins can do that."
    assert refused["key"] == "not_admin"
    assert await server.service.default_model() == "demo"
    # sending back the model in use (Open WebUI posts every option it read) changes nothing: allowed
    options = await asyncio.to_thread(alice.get_options)
    assert await asyncio.to_thread(alice.set_options, options) is None
    assert await asyncio.to_thread(root.set_options, {"sd_model_checkpoint": "other"}) is None
    assert await server.service.default_model() == "other"
    assert (await asyncio.to_thread(alice.get_options))["sd_model_checkpoint"] == "other"


async def test_the_admin_token_switches_the_default_model_without_accounts(make_server):
    server = await make_server()
    body = {"sd_model_checkpoint": "other.safetensors [0123abcd]"}
    assert_a1111_error(await server.client.post("/sdapi/v1/options", json=body), 403, "Only admins")
    response = await server.client.post("/sdapi/v1/options", json=body,
                                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200 and response.json() is None
    assert await server.service.default_model() == "other"


async def test_progress_and_interrupt_concern_the_callers_own_job(make_server):
    server = await make_server(users=True, limits={"max_steps": 500}, **ACCOUNTS)
    alice, bob = await server.webui("alice"), await server.webui("bob")
    assert (await asyncio.to_thread(alice.get_progress))["state"]["job_count"] == 0
    call = asyncio.create_task(asyncio.to_thread(alice.txt2img, prompt="a long one", width=64, height=64,
                                                 steps=500))

    async def alice_running():
        seen = await asyncio.to_thread(alice.get_progress)
        return seen if seen["progress"] > 0 else None
    progress = await wait_for(alice_running, "alice's job to make progress")
    state = progress["state"]
    assert state["job_count"] == 1 and state["sampling_steps"] == 500 and 1 <= state["sampling_step"] < 500
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] >= 0 and state["queue_position"] is None
    job = await server.service.job(state["job"])
    assert job.origin.user_key == "web:user:alice" and job.status == "running"

    others = await asyncio.to_thread(bob.get_progress)
    assert others["progress"] == 0 and others["state"]["job_count"] == 0 and others["state"]["job"] == ""
    assert others["current_image"] is None
    assert await asyncio.to_thread(bob.interrupt) == {}  # bob has nothing running: alice's job goes on
    assert (await server.service.job(job.id)).status == "running" and not call.done()

    assert await asyncio.to_thread(alice.interrupt) == {}
    result = await asyncio.wait_for(call, WAIT)  # the blocking call answers once the job stops
    assert result.images == [] and result.info["all_seeds"] == [] and result.info["imagebot_job"] == job.public_id
    assert (await server.service.job(job.id)).status == "cancelled"
    assert (await asyncio.to_thread(alice.get_progress))["state"]["job_count"] == 0


async def test_a_waiting_job_shows_its_place_in_line(make_server):
    server = await make_server(users=True, limits={"max_steps": 500}, **ACCOUNTS)
    bob, alice = await server.webui("bob"), await server.webui("alice")
    holding = asyncio.create_task(asyncio.to_thread(bob.txt2img, prompt="holding the worker", width=64, height=64,
                                                    steps=500))

    async def bob_running():
        return (await asyncio.to_thread(bob.get_progress))["progress"] > 0
    await wait_for(bob_running, "bob's job to run")
    waiting = asyncio.create_task(asyncio.to_thread(alice.txt2img, prompt="after bob", **SMALL))

    async def alice_queued():
        seen = await asyncio.to_thread(alice.get_progress)
        return seen if seen["state"]["job_count"] == 1 else None
    progress = await wait_for(alice_queued, "alice's job to be queued")
    assert progress["progress"] == 0 and progress["state"]["queue_position"] == 1
    assert progress["textinfo"] == "Queued #1"
    await asyncio.to_thread(bob.interrupt)
    assert (await asyncio.wait_for(holding, WAIT)).images == []
    result = await asyncio.wait_for(waiting, WAIT)  # its turn came: the blocking call answers with the image
    assert len(result.images) == 1


# --- who is calling -------------------------------------------------------------------------------------


async def test_with_accounts_calls_need_http_basic_auth_and_wrong_passwords_are_limited(make_server):
    server = await make_server(users=True, **ACCOUNTS)
    refused = assert_a1111_error(await server.client.get("/sdapi/v1/sd-models"), 401, "HTTP Basic auth")
    assert refused["key"] == "a1111_sign_in_required"
    response = await server.client.get("/sdapi/v1/options", headers=basic("", ""))  # a blank auth setting
    assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
    assert_a1111_error(await server.client.get("/sdapi/v1/options", headers=basic("alice", "not it")), 401,
                       "Wrong user name or password")
    assert (await server.client.get("/sdapi/v1/options", headers=basic("alice"))).status_code == 200

    checks = 0
    verify = server.service.accounts.verify

    async def counted(name, password):
        nonlocal checks
        checks += 1
        return await verify(name, password)
    server.service.accounts.verify = counted
    for _ in range(3):  # a client polling with the same credentials costs no password check each time
        assert (await server.client.get("/sdapi/v1/progress", headers=basic("alice"))).status_code == 200
    assert checks == 0
    for _ in range(9):
        await server.client.get("/sdapi/v1/options", headers=basic("bob", "guess"))
    assert_a1111_error(await server.client.get("/sdapi/v1/options", headers=basic("bob", "guess")), 429,
                       "Too many failed sign-ins")


async def test_a_burst_of_basic_auth_guesses_sent_at_once_is_limited_too(make_server):
    server = await make_server(users=True, **ACCOUNTS)
    guesses = [server.client.get("/sdapi/v1/options", headers=basic("alice", PASSWORD if n == 40 else f"guess {n}"))
               for n in range(60)]  # the right one among them
    codes = [response.status_code for response in await asyncio.gather(*guesses)]
    assert codes.count(401) == 10 and codes.count(429) == 50, codes
    assert codes[40] == 429


async def test_without_accounts_callers_are_told_apart_by_client_key_and_basic_auth_is_ignored(make_server):
    server = await make_server()
    key = {"X-Imagebot-User": "carol-0123456789abcdef"}
    response = await server.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", **SMALL},
                                        headers={**key, **basic("nobody", "anything")})
    assert response.status_code == 200, response.text
    job = await server.service.job(json.loads(response.json()["info"])["imagebot_job"])
    assert job.origin.user_key == "web:carol-0123456789abcdef" and job.origin.address == "127.0.0.1"


async def test_the_api_can_be_turned_off(make_server):
    server = await make_server(a1111={"enabled": False})
    for method, path in (("GET", "/sdapi/v1/options"), ("POST", "/sdapi/v1/txt2img"), ("GET", "/sdapi/v1/progress")):
        response = await server.client.request(method, path, json={"prompt": "a fox"} if method == "POST" else None)
        assert response.status_code == 404, path
    assert (await server.client.get("/api/models")).status_code == 200


# --- refusals ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "status", "fragments"), [
    ({"batch_size": 3, "n_iter": 2}, 422, ["batch_size 3 x n_iter 2 asks for 6 images; at most 4 per request."]),
    ({"sampler_name": "Euler", "scheduler": "exponential"}, 422, ["Unknown sampler 'Euler + exponential'",
                                                                  "DPM++ 2M Karras", "Euler a"]),
    ({"sampler_name": "DPM++ SDE"}, 422, ["Unknown sampler 'DPM++ SDE'"]),
    ({"override_settings": {"sd_model_checkpoint": "nothing-here"}}, 404, ["There is no model 'nothing-here'"]),
    ({"enable_hr": True}, 422, ["Not supported on this server: enable_hr"]),
    ({"steps": 5000}, 422, ["steps must be 1-50, got 5000"]),
    ({"batch_size": 0}, 422, ["batch_size"]),
])
async def test_refusals_answer_in_a1111s_error_shape(make_server, body, status, fragments):
    server = await make_server()
    response = await server.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", **SMALL, **body})
    assert_a1111_error(response, status, *fragments)


async def test_img2img_refusals(make_server):
    server = await make_server()
    for body, fragment in (({}, "img2img needs init_images"),
                           ({"init_images": ["https://example.org/cat.png"]}, "fetches no URLs"),
                           ({"init_images": ["not base64!"]}, "not a base64-encoded picture"),
                           ({"init_images": [base64.b64encode(b"plain text").decode()]}, "not a picture")):
        response = await server.client.post("/sdapi/v1/img2img", json={"prompt": "a fox", **SMALL, **body})
        assert response.status_code in (415, 422), response.text
        assert_a1111_error(response, response.status_code, fragment)


async def test_the_queues_limits_apply_as_to_every_frontend(make_server):
    server = await make_server(queue={"max_jobs_per_hour": 1})
    first = await server.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", **SMALL})
    assert first.status_code == 200, first.text
    refused = assert_a1111_error(await server.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", **SMALL}),
                                 429, "the limit is 1")
    assert refused["key"] == "rate_limited"
    response = await server.client.post("/api/admin/ban", json={"user": "web:anon-127.0.0.1", "reason": "spam"},
                                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert response.status_code == 200, response.text
    assert_a1111_error(await server.client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", **SMALL}), 403, "spam")


# --- Open WebUI -------------------------------------------------------------------------------------------

# What Open WebUI's AUTOMATIC1111 image engine sends and how it reads the answers, replayed from its
# source: backend/open_webui/routers/images.py of open-webui/open-webui at commit
# 02530d501461ce58ab06231d7c2ef2024a141ddf (get_automatic1111_api_auth, get_image_model,
# set_image_model, get_models, image_generations, get_image_data). It talks with aiohttp, so this does.


def open_webui_auth(api_auth: str | None) -> str:
    """get_automatic1111_api_auth: '' without a setting, else "Basic " + base64 of "user:pass"."""
    if api_auth is None:
        return ""
    return "Basic " + base64.b64encode(api_auth.encode("utf-8")).decode("utf-8")


def open_webui_image_data(data: str) -> tuple[bytes, str]:
    """get_image_data, for what an A1111 answer holds: base64, with or without a data: header."""
    if "," in data:
        header, encoded = data.split(",", 1)
        return base64.b64decode(encoded), header.split(";")[0].lstrip("data:")
    return base64.b64decode(data), "image/png"


async def open_webui_generate(base_url: str, api_auth: str | None, prompt: str, size: str, steps: int,
                              n: int = 1) -> list[dict[str, Any]]:
    """image_generations with IMAGE_GENERATION_ENGINE 'automatic1111', down to what it uploads."""
    headers = {"authorization": open_webui_auth(api_auth)}
    async with aiohttp.ClientSession() as session:
        async with session.get(url=f"{base_url}/sdapi/v1/options", headers=headers) as r:  # get_image_model
            options = await r.json()
        model = options["sd_model_checkpoint"]
        width, height = tuple(map(int, size.split("x")))
        data = {"prompt": prompt, "batch_size": n, "width": width, "height": height}
        data["steps"] = steps
        async with session.post(url=f"{base_url}/sdapi/v1/txt2img", json=data, headers=headers) as r:
            res = await r.json(content_type=None)
    uploads = []
    for image in res["images"]:
        image_data, content_type = open_webui_image_data(image)
        uploads.append({"data": image_data, "content_type": content_type, "metadata": {**data, "info": res["info"]},
                        "model": model})
    return uploads


async def open_webui_set_model(base_url: str, api_auth: str | None, model: str) -> bool:
    """set_image_model: read the options, post them all back with the new checkpoint (its errors
    are only logged there; here: whether it went through)."""
    headers = {"authorization": open_webui_auth(api_auth)}
    async with aiohttp.ClientSession() as session:
        async with session.get(url=f"{base_url}/sdapi/v1/options", headers=headers) as r:
            options = await r.json()
        if model != options["sd_model_checkpoint"]:
            options["sd_model_checkpoint"] = model
            async with session.post(url=f"{base_url}/sdapi/v1/options", json=options, headers=headers) as r:
                try:
                    r.raise_for_status()
                except aiohttp.ClientResponseError:
                    return False
    return True


async def open_webui_models(base_url: str, api_auth: str | None) -> list[dict[str, str]]:
    """get_models: the sd-models list as Open WebUI shows it."""
    async with aiohttp.ClientSession() as session:
        async with session.get(url=f"{base_url}/sdapi/v1/sd-models",
                               headers={"authorization": open_webui_auth(api_auth)}) as r:
            models = await r.json()
    return [{"id": model["title"], "name": model["model_name"]} for model in models]


async def test_open_webui_without_api_auth(make_server):
    server = await make_server()
    base_url = f"http://127.0.0.1:{server.port}"
    assert await open_webui_models(base_url, None) == [{"id": "demo", "name": "demo"}, {"id": "other", "name": "other"}]
    uploads = await open_webui_generate(base_url, None, "a white triangle on a green background", "64x64", 2, n=2)
    assert len(uploads) == 2 and all(upload["content_type"] == "image/png" for upload in uploads)
    info = json.loads(uploads[0]["metadata"]["info"])
    job = await server.service.job(info["imagebot_job"])
    assert job.origin.user_key == "web:anon-127.0.0.1" and job.request.model == "demo"
    for upload, image in zip(uploads, job.images):
        with Image.open(io.BytesIO(upload["data"])) as picture:
            assert picture.format == "PNG" and picture.size == (64, 64)
            assert picture.text["parameters"] == server.png_parameters(image.file)
    assert info["all_seeds"] == [image.seed for image in job.images]


async def test_open_webui_with_api_auth_of_a_user_and_of_an_admin(make_server):
    server = await make_server(users=True, **ACCOUNTS)
    base_url = f"http://127.0.0.1:{server.port}"
    assert [model["id"] for model in await open_webui_models(base_url, f"alice:{PASSWORD}")] == ["demo", "other"]
    uploads = await open_webui_generate(base_url, f"alice:{PASSWORD}", "a black circle", "64x64", 2)
    job = await server.service.job(json.loads(uploads[0]["metadata"]["info"])["imagebot_job"])
    assert job.origin.user_key == "web:user:alice" and len(job.images) == 1
    assert await open_webui_set_model(base_url, f"alice:{PASSWORD}", "other") is False  # not an admin: refused
    assert await server.service.default_model() == "demo"
    assert await open_webui_set_model(base_url, f"root:{PASSWORD}", "other") is True
    assert await server.service.default_model() == "other"
    with pytest.raises(TypeError):  # a wrong password: a 401 error object where the list of models was
        await open_webui_models(base_url, "alice:wrong password")
