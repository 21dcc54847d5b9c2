"""bot/frontends/text.py: what chat users are shown of a job's error and of a refusal."""

from __future__ import annotations

import pytest

from bot.core.errors import UserError
from bot.core.jobs import Job, Origin
from bot.core.request import GenerationRequest
from bot.frontends.discord.strings import explain as discord_explain
from bot.frontends.telegram.strings import explain as telegram_explain
from bot.frontends.text import job_error, without_paths

MODEL_FILE = "/srv/imagebot/models/sdxl/unet/diffusion_pytorch_model.safetensors"


@pytest.mark.parametrize("text, shown", [
    (f"Error no file named {MODEL_FILE} found", "Error no file named diffusion_pytorch_model.safetensors found"),
    ("cannot read '/home/ops/bot/models/demo/model.toml': denied", "cannot read 'model.toml': denied"),
    (r"OSError: C:\bot\models\x.ckpt is not a file", "OSError: x.ckpt is not a file"),
    ("see https://huggingface.co/docs/diffusers/x and steps 1/2", "see https://huggingface.co/docs/diffusers/x and steps 1/2"),
    ("out of memory (CUDA), 2.1 GiB free", "out of memory (CUDA), 2.1 GiB free"),
])
def test_absolute_paths_are_cut_to_their_last_part(text, shown):
    assert without_paths(text) == shown


def test_a_failed_jobs_error_reaches_chats_without_server_paths():
    request = GenerationRequest(prompt="a fox", negative_prompt="", model="sdxl", seed=1, steps=2, guidance=7.0,
                                width=64, height=64, count=1)
    keyed = Job(1, "failed", request, Origin("telegram", "1"), error_key="generation_failed",
                error_params={"error": f"could not load {MODEL_FILE}"})
    assert job_error(keyed, "en") == ("Generating failed (could not load diffusion_pytorch_model.safetensors). "
                                      "The bot keeps running; try again or tell an admin.")
    plain = Job(2, "failed", request, Origin("discord", "1"), error=f"generation failed: {MODEL_FILE} is corrupt")
    assert job_error(plain, "vi") == "generation failed: diffusion_pytorch_model.safetensors is corrupt"


def test_chat_refusals_show_the_short_id_and_no_paths():
    for explain in (discord_explain, telegram_explain):
        assert explain(UserError("not_your_job", job="a3f09c" + "0" * 18), "en").startswith("Job #a3f09c belongs")
        assert explain(UserError("model_broken", name="sdxl", error=f"{MODEL_FILE} missing"), "en") == (
            "Model 'sdxl' cannot be used right now: diffusion_pytorch_model.safetensors missing")
