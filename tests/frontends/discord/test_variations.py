"""Vary (Subtle), Vary (Strong) and Remix under a result, through discord.py against the fake Discord."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tests.helpers.discord import callback, has_result, original
from tests.helpers.fake_discord import BOB, click, command, modal_submit

MODAL = 9  # the interaction callback type that opens a modal


def pixels(call) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(call.files[0].data)).convert("RGB")).astype(np.float64)


async def test_subtle_and_strong_buttons_vary_the_image_with_the_configured_strengths(make_stack, fake):
    stack = await make_stack(variations={"subtle": 0.3, "strong": 0.9})
    payload = command("imagine", prompt="a lighthouse --steps 4 --seed 3")
    stack.dispatch(payload)
    result = await fake.wait_for("PATCH", original(payload), has_result)
    message, source = result.response, await stack.wait_delivery(1)

    strengths = {}
    for job_id, action in ((2, "vsub"), (3, "var")):
        clicked = click(f"imagebot:{action}:{source.public_id}:0", message, user=BOB)
        stack.dispatch(clicked)
        varied = await fake.wait_for("PATCH", original(clicked), has_result)
        job = await stack.service.job(job_id)
        assert job.request.init_image.endswith(source.images[0].file)
        strengths[action] = job.request.strength
        assert pixels(varied).shape == pixels(result).shape
    assert strengths == {"vsub": 0.3, "var": 0.9}


async def test_remix_opens_the_prompt_in_a_modal_and_varies_with_the_edited_prompt(make_stack, fake):
    stack = await make_stack()
    payload = command("imagine", prompt="a red fox --n 2 --steps 2 --no blurry")
    stack.dispatch(payload)
    message = (await fake.wait_for("PATCH", original(payload), has_result)).response
    source = await stack.wait_delivery(1)

    clicked = click(f"imagebot:remix:{source.public_id}:1", message)
    stack.dispatch(clicked)
    modal = (await fake.wait_for("POST", callback(clicked))).json
    assert modal["type"] == MODAL
    inputs = [c for row in modal["data"]["components"] for c in row.get("components", [row.get("component", row)])]
    assert [(i["custom_id"], i["value"]) for i in inputs if i.get("custom_id") == "prompt"] == [("prompt", "a red fox")]
    assert modal["data"]["title"] == "Remix image 2"

    submitted = modal_submit(modal["data"]["custom_id"], {"prompt": "a blue fox --no fog"})
    stack.dispatch(submitted)
    await fake.wait_for("PATCH", original(submitted), has_result)
    job = await stack.service.job(2)
    assert (job.request.prompt, job.request.negative_prompt) == ("a blue fox", "fog")
    assert job.request.init_image.endswith(source.images[1].file)
    assert job.request.strength == stack.config.variations.strong and job.request.count == 2

    emptied = click(f"imagebot:remix:{source.public_id}:0", message)
    stack.dispatch(emptied)
    modal = (await fake.wait_for("POST", callback(emptied))).json
    refused = modal_submit(modal["data"]["custom_id"], {"prompt": "   "})
    stack.dispatch(refused)
    answer = (await fake.wait_for("POST", callback(refused))).json
    assert answer["data"]["content"].startswith("Remix needs the new prompt")
