"""The HTTP API through the real app, shared by the web API tests: a real store, registry, GPU
worker thread and service on the tiny model, driven by a real HTTP client (httpx) through the ASGI
app. The `make_api` and `api` fixtures are registered in tests/frontends/web/conftest.py.

Each test builds its own stack (`api` fixture) and stops it afterwards, cancelling whatever is
still queued or running so no worker thread outlives its test.
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from bot.config import Config, Secrets
from bot.core.service import Service
from bot.core.store import Store
from bot.executors.local import LocalExecutor
from bot.frontends.web.api import create_app
from tests.helpers.service import start_service, stop_service

ADMIN_TOKEN = "admin-token-for-tests-0123456789"
ALICE = {"X-Imagebot-User": "alice-0123456789abcdef"}
BOB = {"X-Imagebot-User": "bob-0123456789abcdef"}
CAROL = {"X-Imagebot-User": "carol-0123456789abcdef"}
ADMIN = {"X-Imagebot-User": "root-0123456789abcdef", "Authorization": f"Bearer {ADMIN_TOKEN}"}
FINISHED = ("done", "failed", "cancelled")


@dataclass
class Api:
    client: httpx.AsyncClient
    service: Service
    executor: LocalExecutor
    store: Store
    config: Config

    async def hold_worker(self) -> str:
        """Keep the worker busy with a long job until `release()`: no timing guesses needed.
        Needs limits.max_steps >= 500."""
        job_id = (await self.submit("holding the worker --steps 500", {"X-Imagebot-User": "holder-0123456789abcdef"}))["id"]
        await self.wait_running(job_id)
        return job_id

    async def release(self, job_id: str) -> None:
        response = await self.client.delete(f"/api/jobs/{job_id}", headers=ADMIN)
        assert response.status_code == 200, response.text
        assert (await self.wait(job_id))["status"] == "cancelled"

    @property
    def outputs(self) -> Path:
        return self.config.storage.outputs_path()

    async def submit(self, body: dict[str, Any] | str, headers: dict[str, str] = ALICE) -> dict[str, Any]:
        response = await self.client.post("/api/jobs", json={"prompt": body} if isinstance(body, str) else body,
                                          headers=headers)
        assert response.status_code == 202, response.text
        return response.json()

    async def job(self, job_id: str, headers: dict[str, str] = ALICE) -> dict[str, Any]:
        response = await self.client.get(f"/api/jobs/{job_id}", headers=headers)
        assert response.status_code == 200, response.text
        return response.json()

    async def wait(self, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Poll GET /api/jobs/{id} until the job has finished."""
        async def poll() -> dict[str, Any]:
            while (job := await self.job(job_id))["status"] not in FINISHED:
                await asyncio.sleep(0.03)
            return job
        return await asyncio.wait_for(poll(), timeout)

    async def wait_running(self, job_id: str, timeout: float = 180.0) -> dict[str, Any]:
        """Poll until the job runs and has made at least one step."""
        async def poll() -> dict[str, Any]:
            while True:
                job = await self.job(job_id)
                assert job["status"] not in FINISHED, job
                if job["status"] == "running" and job["progress"] and job["progress"]["step"] >= 1:
                    return job
                await asyncio.sleep(0.02)
        return await asyncio.wait_for(poll(), timeout)


@pytest.fixture
async def make_api(tmp_path, models_dir):
    """make_api(admin_token=..., queue={...}, ...) -> a running stack and its client."""
    stacks: list[Api] = []

    async def make(admin_token: str | None = ADMIN_TOKEN, **sections: dict[str, Any]) -> Api:
        config, store, executor, service = await start_service(tmp_path / "state", models_dir, **sections)
        app = create_app(service, config, Secrets(admin_token=admin_token))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                   base_url="http://localhost", timeout=60.0)
        stack = Api(client, service, executor, store, config)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        await stack.client.aclose()
        await stop_service(stack.service, stack.store)


@pytest.fixture
async def api(make_api) -> Api:
    return await make_api()


def assert_error(response: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body
    return body


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
