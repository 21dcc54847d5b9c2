"""The diffusion-transformer families through the HTTP API and the AUTOMATIC1111-compatible API: one
real `imagebot serve` for the module on a store of tiny variants (an SD 1.x model, FLUX.1 dev, FLUX.1
dev with true CFG, FLUX.1 schnell, Qwen-Image, SD 3.5, FLUX.2 klein, Z-Image), driven over HTTP (httpx)
and by the `webuiapi` client.

What a family cannot do comes back as a 4xx with the catalogue's message; /api/models says, per
model, what its family can do, as the core decides it."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from PIL import Image

from bot.core.errors import UserError
from bot.core.messages import render
from bot.models.variant import SCHEDULERS
from tests.helpers.models import SMALL_DIT_TOML, add_pipeline_variant
from tests.helpers.ports import free_port
from tests.helpers.serve_process import serve_process

webuiapi = pytest.importorskip("webuiapi")

REPO = Path(__file__).resolve().parents[3]
ALICE = {"X-Imagebot-User": "alice-0123456789abcdef"}
WAIT = 180.0  # seconds any one wait may take on a busy CPU; never a timing assertion
FINISHED = ("done", "failed", "cancelled")
VARIANTS = {"flux": ("flux1-dev", ""), "flux-cfg": ("flux1-dev", "true_cfg = 3\n"),
            "schnell": ("flux1-schnell", ""), "qwen": ("qwenimage", ""), "sd3": ("sd3", ""),
            "klein": ("flux2-klein", ""), "zimage": ("zimage", "")}


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_pipeline_dir, tiny_dit_dir):
    root = tmp_path_factory.mktemp("families-api")
    models = root / "models"
    models.mkdir()
    add_pipeline_variant(models, "demo", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 2\n')
    for name, (family, extra) in VARIANTS.items():
        add_pipeline_variant(models, name, tiny_dit_dir(family), SMALL_DIT_TOML + extra)
    port = free_port()
    config = root / "config.toml"
    config.write_text(f"[storage]\nstate_dir = '{root / 'state'}'\nmodels_dir = '{models}'\n\n"
                      "[engine]\ndevice = 'cpu'\nthreads = 1\n\n[limits]\nmin_side = 32\n\n"
                      f"[models]\nrescan_seconds = 0.0\ndefault = 'demo'\n\n[web]\nport = {port}\n", encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    for name in ("IMAGEBOT_CONFIG", "DISCORD_TOKEN", "TELEGRAM_TOKEN", "IMAGEBOT_ADMIN_TOKEN"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    with serve_process(config, root, env, url, root / "serve.log", start_seconds=180):
        with httpx.Client(base_url=url, timeout=WAIT) as client:
            yield SimpleNamespace(client=client, port=port, outputs=root / "state" / "outputs")


def draw(server, body: dict) -> dict:
    """POST /api/jobs and wait until the job has finished; the job."""
    response = server.client.post("/api/jobs", json=body, headers=ALICE)
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    deadline = time.monotonic() + WAIT
    while (job := server.client.get(f"/api/jobs/{job_id}", headers=ALICE).json())["status"] not in FINISHED:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def refusal(key: str, **params) -> str:
    return str(UserError(key, **params))


# --- GET /api/models -------------------------------------------------------------------------------------


def test_models_say_what_each_family_can_do(server):
    models = {model["name"]: model for model in server.client.get("/api/models", headers=ALICE).json()["models"]}
    flux = models["flux"]["family"]
    assert flux == {"name": "flux1-dev", "label": "FLUX.1 [dev]", "native_size": 1024, "size_step": 16,
                    "negative_prompt": False, "guidance": True, "guidance_kind": "distilled", "prompt_weights": False,
                    "loras": True, "img2img": True, "inpaint": True, "default_steps": 28, "default_guidance": 3.5,
                    "default_scheduler": "euler", "schedulers": ["euler"]}
    # The variant's own drawing defaults stay apart, filled in from the family where it says nothing.
    assert (models["flux"]["defaults"]["steps"], models["flux"]["defaults"]["guidance"]) == (2, 3.5)
    assert "family" not in models["flux"]["defaults"]
    assert models["flux-cfg"]["family"]["negative_prompt"] is True  # true CFG brings the negative prompt back
    schnell = models["schnell"]["family"]
    assert (schnell["label"], schnell["guidance"], schnell["negative_prompt"]) == ("FLUX.1 [schnell]", False, False)
    qwen = models["qwen"]["family"]
    assert (qwen["label"], qwen["negative_prompt"], qwen["guidance"], qwen["size_step"]) == ("Qwen-Image", True, True, 16)
    demo = models["demo"]["family"]
    assert (demo["name"], demo["negative_prompt"], demo["prompt_weights"], demo["size_step"]) == ("sd1", True, True, 8)
    assert demo["schedulers"] == list(SCHEDULERS)


# --- POST /api/jobs --------------------------------------------------------------------------------------


def test_flux_and_qwen_draw_through_the_api(server):
    flux = draw(server, {"prompt": "a red circle on a blue background", "model": "flux", "seed": 3})
    assert flux["status"] == "done", flux
    assert (flux["request"]["guidance"], flux["request"]["scheduler"], flux["request"]["steps"]) == (3.5, "euler", 2)
    [image] = flux["images"]
    with Image.open(io.BytesIO(server.client.get(image["url"], headers=ALICE).content)) as png:
        assert png.size == (64, 64)
        assert "CFG scale: 1, Distilled CFG Scale: 3.5" in png.text["parameters"]
    qwen = draw(server, {"prompt": "a red circle", "negative_prompt": "blue", "model": "qwen", "seed": 3,
                         "size": "100x76"})
    assert qwen["status"] == "done", qwen
    assert qwen["request"]["negative_prompt"] == "blue"
    assert (qwen["request"]["width"], qwen["request"]["height"]) == (96, 80)  # on the family's 16 px grid


@pytest.mark.parametrize("body, key, params", [
    ({"prompt": "a fox", "negative_prompt": "blurry", "model": "flux"}, "family_no_negative",
     {"model": "flux", "family": "FLUX.1 [dev]"}),
    ({"prompt": "a fox --no blurry", "model": "schnell"}, "family_no_negative",
     {"model": "schnell", "family": "FLUX.1 [schnell]"}),
    ({"prompt": "a (red:1.3) fox", "model": "qwen"}, "family_no_weights", {"model": "qwen", "family": "Qwen-Image"}),
    ({"prompt": "a fox", "scheduler": "dpm++", "model": "flux"}, "family_scheduler",
     {"model": "flux", "family": "FLUX.1 [dev]", "got": "dpm++", "allowed": "euler"}),
    ({"prompt": "a fox", "guidance": 4, "model": "schnell"}, "family_no_guidance",
     {"model": "schnell", "family": "FLUX.1 [schnell]"}),
])
def test_what_a_family_cannot_do_is_refused_with_the_catalogue_message(server, body, key, params):
    response = server.client.post("/api/jobs", json=body, headers=ALICE)
    assert response.status_code == 400, response.text
    assert response.json() == {"error": refusal(key, **params), "key": key}


def test_a_refusal_speaks_the_callers_language(server):
    response = server.client.post("/api/jobs", json={"prompt": "a fox --no blurry", "model": "flux"},
                                  headers={**ALICE, "Accept-Language": "vi"})
    assert response.status_code == 400
    assert response.json()["error"] == render("family_no_negative", "vi", model="flux", family="FLUX.1 [dev]")


def test_true_cfg_lets_a_flux_model_take_a_negative_prompt(server):
    job = draw(server, {"prompt": "a red circle", "negative_prompt": "blue", "model": "flux-cfg", "seed": 1})
    assert job["status"] == "done", job
    assert job["request"]["true_cfg"] == 3.0


# --- the AUTOMATIC1111-compatible API ----------------------------------------------------------------------


def webui(server, sampler: str = "Euler"):
    return webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler=sampler, steps=2)


def test_sd_models_lists_every_family(server):
    titles = [model["title"] for model in webui(server).get_sd_models()]
    assert sorted(titles) == ["demo", "flux", "flux-cfg", "klein", "qwen", "schnell", "sd3", "zimage"]


@pytest.mark.parametrize("model", sorted(VARIANTS))
def test_every_family_draws_through_the_api_and_txt2img(server, model):
    job = draw(server, {"prompt": "a red circle on a blue background", "model": model, "seed": 4})
    assert job["status"] == "done", job
    assert len(job["images"]) == 1
    result = webui(server).txt2img(prompt="a red circle", seed=4, width=64, height=64,
                                   override_settings={"sd_model_checkpoint": model})
    assert result.image.size == (64, 64)
    assert f"Model: {model}" in result.info["infotexts"][0]


def test_txt2img_on_flux_answers_with_its_distilled_guidance(server):
    # webuiapi sends CFG scale 7 unasked: a CFG scale, which FLUX.1 dev does not guide with (as Forge reads it).
    result = webui(server).txt2img(prompt="a red circle", seed=5, width=64, height=64,
                                   override_settings={"sd_model_checkpoint": "flux"})
    info = result.info
    [infotext] = info["infotexts"]
    assert "Sampler: Euler, CFG scale: 1, Distilled CFG Scale: 3.5, Seed: 5" in infotext, infotext
    assert (info["cfg_scale"], info["distilled_cfg_scale"], info["sd_model_name"]) == (1.0, 3.5, "flux")
    assert info["extra_generation_params"]["Distilled CFG Scale"] == 3.5
    assert result.image.size == (64, 64)


def test_txt2img_takes_forges_distilled_cfg_scale(server):
    response = server.client.post("/sdapi/v1/txt2img", json={
        "prompt": "a red circle", "seed": 5, "steps": 2, "width": 64, "height": 64, "sampler_name": "Euler",
        "cfg_scale": 1, "distilled_cfg_scale": 5, "override_settings": {"sd_model_checkpoint": "flux"}})
    assert response.status_code == 200, response.text
    info = json.loads(response.json()["info"])
    assert "CFG scale: 1, Distilled CFG Scale: 5," in info["infotexts"][0]


def test_txt2img_on_a_family_without_guidance_leaves_the_cfg_scale_out(server):
    result = webui(server).txt2img(prompt="a red circle", seed=5, width=64, height=64, cfg_scale=7,
                                   override_settings={"sd_model_checkpoint": "schnell"})
    [infotext] = result.info["infotexts"]
    assert "Sampler: Euler, CFG scale: 1, Seed: 5" in infotext, infotext
    assert "distilled_cfg_scale" not in result.info


def test_txt2img_on_sd_still_takes_the_cfg_scale(server):
    result = webui(server).txt2img(prompt="a red circle", seed=5, width=64, height=64, cfg_scale=6, steps=2,
                                   override_settings={"sd_model_checkpoint": "demo"})
    assert "CFG scale: 6," in result.info["infotexts"][0]
    assert result.info["cfg_scale"] == 6.0


@pytest.mark.parametrize("body, key, params", [
    ({"sampler_name": "DPM++ 2M"}, "family_scheduler",
     {"model": "flux", "family": "FLUX.1 [dev]", "got": "dpm++", "allowed": "euler"}),
    ({"sampler_name": "Euler", "negative_prompt": "blurry"}, "family_no_negative",
     {"model": "flux", "family": "FLUX.1 [dev]"}),
])
def test_txt2img_refuses_what_the_family_cannot_do(server, body, key, params):
    response = server.client.post("/sdapi/v1/txt2img", json={
        "prompt": "a fox", "steps": 2, "width": 64, "height": 64, **body,
        "override_settings": {"sd_model_checkpoint": "flux"}})
    assert response.status_code == 422, response.text
    answer = response.json()
    assert (answer["detail"], answer["key"]) == (refusal(key, **params), key)
