"""The API's own refusals (unknown URL or action, no preview or image, a malformed or oversized
body) come from the web's catalogue in the caller's language, with the same status and key in any."""

from __future__ import annotations

from unittest.mock import AsyncMock, MagicMock

import httpx
import pytest

from bot.config import Secrets, config_from_dict
from bot.frontends.web.api import create_app


@pytest.fixture
async def client():
    service = MagicMock(job=AsyncMock(), preview=MagicMock(return_value=None))  # a job without a preview yet
    app = create_app(service, config_from_dict({}), Secrets())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://localhost") as client:
        yield client


@pytest.mark.parametrize("language, texts", [
    ("en", ["Not found.", "Unknown action; use reroll, vary_subtle, vary_strong, remix or upscale.", "No preview yet.", "No such image.",
            "Invalid request: prompt: ", "The request body is larger than 64 KiB."]),
    ("vi", ["Không tìm thấy.", "Không có thao tác này; hãy dùng reroll, vary_subtle, vary_strong, remix hoặc upscale.",
            "Chưa có ảnh xem trước.", "Không có ảnh này.", "Yêu cầu không hợp lệ: prompt: ",
            "Nội dung yêu cầu lớn hơn 64 KiB."]),
])
async def test_refusals_in_the_callers_language(client, language, texts):
    headers = {"Accept-Language": language}
    responses = [
        await client.get("/nowhere", headers=headers),
        await client.post("/api/jobs/1/dance", headers=headers),
        await client.get("/api/jobs/1/preview", headers=headers),
        await client.get("/api/images/nothing.png", headers=headers),
        await client.post("/api/jobs", json={"prompt": 1}, headers=headers),
        await client.post("/api/jobs", content=b"x" * (65 * 1024), headers={**headers, "Content-Type": "application/json"}),
    ]
    answers = [(response.status_code, response.json()["key"]) for response in responses]
    assert answers == [(404, "not_found"), (404, "not_found"), (404, "no_preview"), (404, "not_found"),
                       (422, "invalid_request"), (413, "too_large")]
    for response, text in zip(responses, texts):
        assert response.json()["error"].startswith(text)
