"""/describe's captioner: a tiny random-weight BLIP built here suggests several different prompts,
the same ones each time; the service refuses clearly without a model or with a broken one."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.config import config_from_dict
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.engine.describe import Describer
from bot.stack import open_stack
from tests.helpers.blip import WORDS, save_tiny_blip
from tests.helpers.executor import FakeExecutor, fake_model_store

ALICE = Origin("web", "alice", chat_id="web")


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory) -> Path:
    return save_tiny_blip(tmp_path_factory.mktemp("blip") / "blip-base")


def png(color: str = "red") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(out, format="PNG")
    return out.getvalue()


def test_candidates_are_different_words_of_the_model_and_repeatable(tiny_blip):
    describer = Describer(tiny_blip, "cpu", candidates=4)
    picture = Image.new("RGB", (40, 40), "red")
    prompts = describer.describe(picture)
    assert 2 <= len(prompts) <= 4 and len(set(prompts)) == len(prompts)
    assert all(prompt and set(prompt.split()) <= set(WORDS) for prompt in prompts), prompts
    assert Describer(tiny_blip, "cpu", candidates=4).describe(picture) == prompts  # same weights, same answer
    assert len(Describer(tiny_blip, "cpu", candidates=1).describe(picture)) == 1


async def stack_with(tmp_path, describe: dict, **limits):
    config = config_from_dict({"storage": {"state_dir": str(tmp_path / "state"), "models_dir": str(tmp_path / "models")},
                               "limits": {"min_side": 32, **limits}, "describe": describe})
    fake_model_store(Path(config.storage.models_dir))
    return await open_stack(config, FakeExecutor())


async def test_the_service_describes_uploads_and_says_how_to_add_a_model(tmp_path, tiny_blip):
    stack = await stack_with(tmp_path, {"model": str(tiny_blip), "device": "cpu"})
    try:
        prompts = await stack.service.describe(png(), ALICE)
        assert prompts == Describer(tiny_blip, "cpu").describe(Image.new("RGB", (40, 40), "red"))
        handle = await stack.service.upload(png(), ALICE)
        assert await stack.service.describe(handle, ALICE) == prompts
        with pytest.raises(UserError, match="not a picture"):
            await stack.service.describe(b"not an image", ALICE)
    finally:
        await stack.close()

    stack = await stack_with(tmp_path / "off", {})
    try:
        with pytest.raises(UserError) as caught:
            await stack.service.describe(png(), ALICE)
        assert caught.value.key == "describe_not_configured"  # a user is not told how to set it up
        assert "config.toml" not in str(caught.value)
        with pytest.raises(UserError) as caught:
            await stack.service.describe(png(), Origin("web", "root", chat_id="web", is_admin=True))
        assert caught.value.key == "describe_not_configured_admin"
        assert '[describe] model = "models/blip-base"' in str(caught.value)
    finally:
        await stack.close()

    stack = await stack_with(tmp_path / "broken", {"model": str(tmp_path / "nothing-here"), "device": "cpu"})
    try:
        with pytest.raises(UserError, match="cannot be used: no captioning model in"):
            await stack.service.describe(png(), ALICE)
    finally:
        await stack.close()


async def test_describing_is_limited_per_user_and_per_address(tmp_path, tiny_blip):
    stack = await stack_with(tmp_path, {"model": str(tiny_blip), "device": "cpu"}, max_describes_per_minute=2)
    there = [Origin("web", key, chat_id="web", address="203.0.113.7") for key in ("first-key-0123", "second-key-012")]
    try:
        for _ in range(2):
            await stack.service.describe(png(), there[0])
        with pytest.raises(UserError) as refused:
            await stack.service.describe(png(), there[0])
        assert refused.value.key == "describe_rate_limited" and refused.value.params["limit"] == 2
        with pytest.raises(UserError) as refused:  # a new key from the same address does not help
            await stack.service.describe(png(), there[1])
        assert refused.value.key == "describe_rate_limited"
        assert await stack.service.describe(png(), ALICE)  # everyone else is served
        admin = Origin("web", "root", chat_id="web", address="203.0.113.7", is_admin=True)
        assert await stack.service.describe(png(), admin)
    finally:
        await stack.close()

