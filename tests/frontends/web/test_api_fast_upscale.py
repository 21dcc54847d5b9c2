"""Fast mode and Upscale through the HTTP API and the command line: a real store, registry, worker
thread and service on tiny random-weight models (an LCM-LoRA built here, an ESRGAN-shaped upscaler)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.cli import main
from bot.config import Secrets
from bot.frontends.web.api import create_app
from bot.outputs import parse_a1111_parameters
from tests.helpers.models import add_pipeline_variant
from tests.helpers.service import start_service, stop_service
from tests.helpers.tiny import save_tiny_lora, save_tiny_upscaler

ALICE = {"X-Imagebot-User": "alice-0123456789abcdef"}
FINISHED = ("done", "failed", "cancelled")


@pytest.fixture
def store_with_fast_and_upscaler(models_dir, tiny_pipeline_dir) -> Path:
    save_tiny_lora(tiny_pipeline_dir, models_dir / "lcm", seed=7)
    (models_dir / "lcm" / "variant.toml").write_text('kind = "lora"\nbase = "demo"\n')
    add_pipeline_variant(models_dir, "quick", tiny_pipeline_dir,
                         'kind = "pipeline"\nfast_lora = "lcm"\n[defaults]\nsteps = 2\n')
    save_tiny_upscaler(models_dir / "esr" / "tiny-2x.safetensors")
    (models_dir / "esr" / "variant.toml").write_text('kind = "upscaler"\nfile = "tiny-2x.safetensors"\n')
    return models_dir


@pytest.fixture
async def make_client(tmp_path, store_with_fast_and_upscaler):
    stacks = []

    async def make(**sections: dict[str, Any]) -> httpx.AsyncClient:
        config, store, executor, service = await start_service(tmp_path / f"state{len(stacks)}",
                                                               store_with_fast_and_upscaler, **sections)
        app = create_app(service, config, Secrets())
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                   base_url="http://localhost", timeout=60.0)
        stacks.append((client, service, store))
        return client

    yield make
    for client, service, store in stacks:
        await client.aclose()
        await stop_service(service, store)


async def finished(client: httpx.AsyncClient, response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]

    async def poll() -> dict[str, Any]:
        while (job := (await client.get(f"/api/jobs/{job_id}", headers=ALICE)).json())["status"] not in FINISHED:
            await asyncio.sleep(0.05)
        return job
    job = await asyncio.wait_for(poll(), 300)
    assert job["status"] == "done", job
    return job


async def png(client: httpx.AsyncClient, job: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO((await client.get(job["images"][0]["url"])).content))
    image.load()
    return image


async def test_fast_mode_as_an_api_field_and_as_an_inline_flag(make_client):
    client = await make_client()
    by_field = await finished(client, await client.post(
        "/api/jobs", json={"prompt": "a fox", "model": "quick", "fast": True, "seed": 3}, headers=ALICE))
    by_flag = await finished(client, await client.post(
        "/api/jobs", json={"prompt": "a fox --model quick --fast --seed 3"}, headers=ALICE))
    for job in (by_field, by_flag):
        request = job["request"]
        assert (request["fast"], request["steps"], request["guidance"], request["scheduler"]) == (True, 6, 1.5, "lcm")
        parameters = parse_a1111_parameters((await png(client, job)).text["parameters"])
        assert (parameters["Fast mode"], parameters["Steps"], parameters["Sampler"]) == ("lcm", "6", "LCM")
    assert (await png(client, by_field)).tobytes() == (await png(client, by_flag)).tobytes()

    refused = await client.post("/api/jobs", json={"prompt": "a fox", "model": "demo", "fast": True}, headers=ALICE)
    assert refused.status_code == 400 and "no fast mode" in refused.json()["error"]


@pytest.mark.parametrize("upscaler", ["esr", ""])
async def test_upscale_with_and_without_an_upscaler_past_max_side(make_client, upscaler):
    # max_side 64 stands in for a 768 px model's limit (twice 768 is over the default 1024): the
    # upscale is limited by max_upscaled_side instead. The engine tests run an upscaler on 768 px.
    client = await make_client(limits={"max_side": 64, "max_upscaled_side": 128},
                               upscale={"model": upscaler, "strength": 0.2})
    source = await finished(client, await client.post("/api/jobs", json={"prompt": "a fox --steps 2 --seed 1"},
                                                      headers=ALICE))
    response = await client.post(f"/api/jobs/{source['id']}/upscale", json={"index": 0}, headers=ALICE)
    upscaled = await finished(client, response)
    image = await png(client, upscaled)
    assert image.size == (128, 128)
    parameters = parse_a1111_parameters(image.text["parameters"])
    assert parameters["Postprocess upscaler"] == (upscaler or "Lanczos")
    assert float(parameters["Denoising strength"]) == (0.2 if upscaler else 0.35)

    again = await client.post(f"/api/jobs/{upscaled['id']}/upscale", json={"index": 0}, headers=ALICE)
    assert again.status_code == 400 and "larger than 128 px a side" in again.json()["error"]


def test_the_command_line_takes_fast(store_with_fast_and_upscaler, tmp_path, monkeypatch, capsys):
    (tmp_path / "config.toml").write_text(
        f"[storage]\nmodels_dir = '{store_with_fast_and_upscaler}'\nstate_dir = '{tmp_path / 'state'}'\n"
        "[limits]\nmin_side = 32\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    code = main(["imagine", "a fox --seed 3", "--model", "quick", "--fast", "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    with Image.open(out.splitlines()[0]) as image:
        parameters = parse_a1111_parameters(image.text["parameters"])
    assert (parameters["Fast mode"], parameters["Steps"], parameters["Sampler"]) == ("lcm", "6", "LCM")
    assert main(["imagine", "a fox", "--fast"]) == 2  # 'demo', the default, has no fast mode
    assert "no fast mode" in capsys.readouterr().err
