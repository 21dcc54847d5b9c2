"""/imagine with an image attachment: discord.py resolves the attachment from the raw payload and
downloads it from the (fake) CDN; the image prompt pulls the result towards the picture."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers.discord import EPHEMERAL, callback, has_result, original
from tests.helpers.fake_discord import ADMIN, command, with_attachment

REPO = Path(__file__).resolve().parents[3]
PROMPT = "a red circle on a blue background"


def shapes_png() -> tuple[Image.Image, bytes]:
    image = Image.new("RGB", (32, 32), (240, 220, 20))
    image.paste((20, 160, 40), (8, 8, 24, 24))
    image = image.resize((96, 96), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return image, out.getvalue()


def distance(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a.convert("RGB").resize((32, 32)), dtype=float)
                        - np.asarray(b.convert("RGB").resize((32, 32)), dtype=float)).mean())


async def test_an_attached_image_is_drawn_from(make_stack, fake, models_dir):
    shutil.copytree(REPO / "models" / "demo", models_dir / "shapes")  # trained: its VAE keeps what images show
    stack = await make_stack()
    source, data = shapes_png()
    attachment = fake.attach("shapes.png", data)
    with_image = with_attachment(command("imagine", prompt=PROMPT, model="shapes", seed=7, strength=0.3),
                                 "image", attachment)
    stack.dispatch(with_image)
    await fake.wait_for("PATCH", original(with_image), has_result)
    assert fake.cdn_downloads == [attachment["url"].split("/attachments/")[1]]

    text_only = command("imagine", prompt=PROMPT, model="shapes", seed=7)
    stack.dispatch(text_only)
    await fake.wait_for("PATCH", original(text_only), has_result)

    from_image, from_text = (await stack.service.job(1)), (await stack.service.job(2))
    assert from_image.request.init_image and from_image.request.strength == 0.3 and from_text.request.init_image is None
    outputs = stack.config.storage.outputs_path()
    image_result = Image.open(outputs / from_image.images[0].file)
    text_result = Image.open(outputs / from_text.images[0].file)
    assert distance(image_result, source) < distance(text_result, source) - 10


async def test_attachments_that_are_not_usable_are_refused_clearly(make_stack, fake):
    stack = await make_stack(limits={"max_upload_bytes": 50_000, "max_upload_pixels": 256 * 256})
    big = io.BytesIO()
    Image.new("RGB", (512, 512)).save(big, format="PNG")
    cases = [
        (fake.attach("notes.txt", b"hello", "text/plain"), "is not a picture this bot reads"),
        (fake.attach("huge.png", b"x" * 60_000), "The image is 0.1 MiB; the limit is 0.0 MiB."),
        (fake.attach("wide.png", big.getvalue()), "The image is 512x512 pixels; the limit is 65536 pixels."),
    ]
    for attachment, expected in cases:
        payload = with_attachment(command("imagine", prompt="a fox --steps 1"), "image", attachment)
        stack.dispatch(payload)
        answer = (await fake.wait_for("POST", callback(payload))).json
        assert answer["data"]["flags"] & EPHEMERAL and expected in answer["data"]["content"], answer
    paths = [a["url"].split("/attachments/")[1] for a, _ in cases]
    assert fake.cdn_downloads == [paths[2]]  # what Discord says is too large or not an image is never fetched
    assert await stack.store.counts_by_status() == {}


async def test_describe_answers_prompts_whose_buttons_imagine_them(make_stack, fake, tmp_path):
    from tests.helpers.blip import save_tiny_blip
    from tests.helpers.fake_discord import BOB, click, custom_ids

    stack = await make_stack(describe={"model": str(save_tiny_blip(tmp_path / "blip")), "device": "cpu"})
    _, data = shapes_png()
    payload = with_attachment(command("describe"), "image", fake.attach("shapes.png", data))
    stack.dispatch(payload)
    reply = await fake.wait_for("POST", callback(payload))
    message = reply.response["resource"]["message"] if reply.json["type"] == 4 else None
    if message is None:  # deferred on a busy machine: the answer came as an edit
        message = (await fake.wait_for("PATCH", original(payload), lambda c: "Prompts" in c.json.get("content", ""))).response
    lines = message["content"].splitlines()
    assert lines[0] == "Prompts for this picture:" and lines[-1] == "Press a number to imagine it."
    prompts = [line.split(".** ", 1)[1] for line in lines[1:-1]]
    assert 1 <= len(prompts) <= 4
    assert custom_ids(message) == [f"imagebot:describe:{n}" for n in range(1, len(prompts) + 1)]

    pressed = click("imagebot:describe:1", message, user=BOB)
    stack.dispatch(pressed)
    answer = await fake.wait_for("POST", callback(pressed))
    assert "is queued" in answer.json["data"]["content"], answer.json
    job = await stack.service.job(1)
    assert job.request.prompt == prompts[0].replace("\\", "") and job.origin.user_id == str(BOB)

    # Without a captioning model a user is told it is not set up; only an admin is told how.
    no_model = await make_stack()
    for user, said in ((BOB, "not set up on this server"), (ADMIN, "[describe] model")):
        no_model_payload = with_attachment(command("describe", user=user), "image", fake.attach("again.png", data))
        no_model.dispatch(no_model_payload)
        refused = (await fake.wait_for("POST", callback(no_model_payload))).json
        assert refused["data"]["flags"] & EPHEMERAL and said in refused["data"]["content"], refused


async def test_imagine_from_an_image_in_a_message_asks_for_the_prompt(make_stack, fake):
    from tests.helpers.fake_discord import CHANNEL

    stack = await make_stack()
    _, data = shapes_png()
    posted = fake.message({"content": "my drawing"}, CHANNEL)
    posted["attachments"] = [fake.attach("drawing.png", data)]
    menu = command("Imagine from this image")
    menu["data"].update(type=3, target_id=posted["id"], resolved={"messages": {posted["id"]: posted}})
    stack.dispatch(menu)
    modal = (await fake.wait_for("POST", callback(menu))).json
    assert modal["type"] == 9 and modal["data"]["title"] == "Imagine from this image"
    field = modal["data"]["components"][0]["components"][0]
    submit = command("unused")
    submit["type"] = 5
    submit["data"] = {"custom_id": modal["data"]["custom_id"],
                      "components": [{"type": 1, "components": [{"type": 4, "custom_id": field["custom_id"],
                                                                 "value": "a fox --steps 1 --strength 0.4"}]}]}
    stack.dispatch(submit)
    answer = (await fake.wait_for("POST", callback(submit))).json
    assert "is queued" in answer["data"]["content"], answer
    job = await stack.service.job(1)
    assert job.request.prompt == "a fox" and job.request.strength == 0.4 and job.request.init_image

    no_image = fake.message({"content": "just words"}, CHANNEL)
    menu = command("Imagine from this image")
    menu["data"].update(type=3, target_id=no_image["id"], resolved={"messages": {no_image["id"]: no_image}})
    stack.dispatch(menu)
    refused = (await fake.wait_for("POST", callback(menu))).json
    assert refused["data"]["flags"] & EPHEMERAL and refused["data"]["content"] == "That message has no image to start from."
