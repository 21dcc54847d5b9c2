"""Buttons under results: persistent across a restart (a new client and a new service on the same
database), variations and upscales from one image of a grid, delete for the owner or an admin."""

from __future__ import annotations

import io
import json

from PIL import Image

from bot.core.jobs import short_id
from bot.config import VariationsConfig
from bot.core.derived import UPSCALE_STRENGTH
from tests.helpers.discord import EPHEMERAL, callback, has_result, original, stop_stack
from tests.helpers.fake_discord import ADMIN, ALICE, BOB, click, command, custom_ids


async def test_buttons_keep_working_after_a_restart(make_stack, fake):
    first = await make_stack()
    payload = command("imagine", prompt="two foxes --n 2 --steps 2 --seed 7")
    first.dispatch(payload)
    result = await fake.wait_for("PATCH", original(payload), has_result)
    source = await first.wait_delivery(1)
    message = result.response  # the message as Discord stored it, buttons included
    ref = source.public_id  # buttons name the job by its public id, never the internal number
    assert set(custom_ids(message)) == {f"imagebot:{action}:{ref}:{index}" for action in ("up", "var", "vsub", "remix")
                                        for index in (0, 1)} | {f"imagebot:reroll:{ref}", f"imagebot:del:{ref}"}
    grid = Image.open(io.BytesIO(result.files[0].data))
    assert result.files[0].filename == source.grid and grid.format == "PNG"
    await stop_stack(first)

    second = await make_stack()  # a new process: new client, new service, the same database
    variation = click(f"imagebot:var:{ref}:1", message, user=BOB)  # anyone may build on a result
    second.dispatch(variation)
    queued = (await fake.wait_for("POST", callback(variation))).json["data"]["content"]
    assert f"Job #{short_id((await second.service.job(2)).public_id)} is queued" in queued
    varied = await fake.wait_for("PATCH", original(variation), has_result)
    job = await second.service.job(2)
    assert job.request.init_image.endswith(source.images[1].file) and job.request.strength == VariationsConfig().strong
    assert job.origin.user_id == str(BOB) and job.request.count == 2
    assert Image.open(io.BytesIO(varied.files[0].data)).format == "PNG"

    upscale = click(f"imagebot:up:{ref}:0", message)
    second.dispatch(upscale)
    upscaled = await fake.wait_for("PATCH", original(upscale), has_result)
    job = await second.service.job(3)
    assert job.request.init_image.endswith(source.images[0].file) and job.request.strength == UPSCALE_STRENGTH
    assert Image.open(io.BytesIO(upscaled.files[0].data)).size == (128, 128)

    reroll = click(f"imagebot:reroll:{ref}", message)
    second.dispatch(reroll)
    await fake.wait_for("PATCH", original(reroll), has_result)
    job = await second.service.job(4)
    assert (job.request.prompt, job.request.count, job.request.init_image) == ("two foxes", 2, None)


async def one_result(make_stack, fake):
    """(stack, the result message as Discord stored it, the job's public id) of Alice's "a fox"."""
    stack = await make_stack()
    payload = command("imagine", prompt="a fox --steps 1")
    stack.dispatch(payload)
    message = (await fake.wait_for("PATCH", original(payload), has_result)).response
    return stack, message, (await stack.service.job(1)).public_id


async def test_only_the_owner_or_an_admin_deletes_a_result(make_stack, fake):
    stack, message, job = await one_result(make_stack, fake)

    refused = click(f"imagebot:del:{job}", message, user=BOB)
    stack.dispatch(refused)
    answer = (await fake.wait_for("POST", callback(refused))).json
    assert answer["data"]["flags"] & EPHEMERAL
    assert answer["data"]["content"] == (f"Job #{short_id(job)} belongs to someone else; "
                                         "only they or an admin can change it.")
    assert not fake.find("DELETE", original(refused))

    for user in (ALICE, ADMIN):
        delete = click(f"imagebot:del:{job}", message, user=user)
        stack.dispatch(delete)
        await fake.wait_for("DELETE", original(delete))
        assert (await fake.wait_for("POST", callback(delete))).json["type"] == 6  # a deferred update

    # A button of a job the database does not know (discord.py only dispatches ids the message has).
    gone = "0" * 24
    stale = json.loads(json.dumps(message).replace(f"imagebot:reroll:{job}", f"imagebot:reroll:{gone}"))
    unknown = click(f"imagebot:reroll:{gone}", stale)
    stack.dispatch(unknown)
    assert (await fake.wait_for("POST", callback(unknown))).json["data"]["content"] == "There is no job #000000."


async def test_buttons_from_before_public_ids_keep_working_with_the_same_checks(make_stack, fake):
    """Results sent by older versions carry the internal job number in their buttons."""
    stack, message, job = await one_result(make_stack, fake)
    old = json.loads(json.dumps(message).replace(job, "1"))  # as an older version sent it
    assert "imagebot:del:1" in custom_ids(old)

    reroll = click("imagebot:reroll:1", old, user=BOB)
    stack.dispatch(reroll)
    await fake.wait_for("PATCH", original(reroll), has_result)
    assert (await stack.service.job(2)).request.prompt == "a fox"

    refused = click("imagebot:del:1", old, user=BOB)
    stack.dispatch(refused)
    answer = (await fake.wait_for("POST", callback(refused))).json
    assert answer["data"]["content"] == "Job #1 belongs to someone else; only they or an admin can change it."
    delete = click("imagebot:del:1", old, user=ALICE)
    stack.dispatch(delete)
    await fake.wait_for("DELETE", original(delete))
