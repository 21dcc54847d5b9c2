"""/imagine through the real discord.py client and HTTP layer, against the local fake Discord."""

from __future__ import annotations

import io

from PIL import Image

from bot.core.jobs import Origin, short_id
from tests.helpers.discord import EPHEMERAL, TEARDOWN_ADMIN, Clock, callback, has_result, original
from tests.helpers.fake_discord import ALICE, CHANNEL, NSFW_CHANNEL, OTHER_CHANNEL, command


async def test_imagine_queues_shows_progress_and_uploads_a_png(make_stack, fake):
    # Two seconds pass per clock reading, so the 1.5 s throttle lets every progress edit through.
    stack = await make_stack(clock=Clock(step=2.0), limits={"max_steps": 500})
    # A long job of someone else keeps the worker busy, so "queued" is answered before anything runs.
    holder = await stack.service.submit("holding the worker --steps 500", Origin("web", "holder", chat_id="web"))
    await stack.wait_running(holder.job_id)

    payload = command("imagine", prompt="a lighthouse at dusk --steps 3", seed=42, negative="blurry", aspect="1:1")
    stack.dispatch(payload)
    reply = await fake.wait_for("POST", callback(payload))
    job = (await stack.service.job(2)).public_id
    assert reply.json["type"] == 4  # answered at once, with the message itself
    assert reply.json["data"]["content"] == f"Job #{short_id(job)} is queued, #1 in line."
    assert not reply.json["data"].get("flags", 0) & EPHEMERAL  # progress and result are public

    await stack.service.cancel(holder.job_id, TEARDOWN_ADMIN)
    result = await fake.wait_for("PATCH", original(payload), has_result)
    edits = fake.find("PATCH", original(payload))
    progress = [edit.json["content"] for edit in edits[: edits.index(result)]]
    assert any("step" in text or "starting" in text for text in progress), progress

    file = f"{(await stack.service.job(2)).public_id}-0.png"  # image files are named by the job's public id
    assert [f.filename for f in result.files] == [file]
    image = Image.open(io.BytesIO(result.files[0].data))
    assert image.format == "PNG" and image.size == (64, 64)
    assert "a lighthouse at dusk" in image.info["parameters"]
    assert result.json["content"] == f"<@{ALICE}> job #{short_id(job)} is done."
    assert result.json["embeds"][0]["footer"]["text"] == f"Job #{short_id(job)}"
    embed = result.json["embeds"][0]
    fields = {field["name"]: field["value"] for field in embed["fields"]}
    assert embed["title"] == "a lighthouse at dusk"
    assert (fields["Model"], fields["Seed"], fields["Steps"], fields["Size"]) == ("demo", "42", "3", "64x64")
    assert fields["Negative prompt"] == "blurry"
    assert embed["image"]["url"] == f"attachment://{file}"
    buttons = [c for row in result.json["components"] for c in row["components"]]
    assert [b["custom_id"] for b in buttons] == [f"imagebot:up:{job}:0", f"imagebot:var:{job}:0",
                                                 f"imagebot:vsub:{job}:0", f"imagebot:remix:{job}:0",
                                                 f"imagebot:reroll:{job}", f"imagebot:del:{job}"]
    assert [b["label"] for b in buttons] == ["U1", "Vary (Strong)", "Vary (Subtle)", "Remix", "Reroll", "Delete"]
    assert (await stack.wait_delivery(2)).delivery == "delivered"


async def test_bad_input_gets_a_clear_ephemeral_answer(make_stack, fake):
    stack = await make_stack(limits={"max_prompt_chars": 100},
                             moderation={"blocklist": ["gore"]}, discord={"allowed_channels": [CHANNEL, NSFW_CHANNEL]})
    cases = [
        (command("imagine", prompt="   "), "The prompt is empty. Describe the picture"),
        (command("imagine", prompt="x" * 101), "The prompt is 101 characters long; the limit is 100."),
        (command("imagine", prompt="a fox", model="nope"), "There is no model 'nope'. Available: demo."),
        (command("imagine", prompt="a fox", steps=999), "steps must be 1-50, got 999."),
        (command("imagine", prompt="a fox", refiner=0.7), "Model 'demo' has no refiner, so --refiner cannot be used"),
        (command("imagine", prompt="a fox --steps many"), "steps must be a whole number, got 'many'."),
        (command("imagine", prompt="a fox", size="huge"), "Size must look like 768x512 (width x height), got 'huge'."),
        (command("imagine", prompt="a GORE scene"),
         "The prompt contains 'gore', which is only allowed in age-restricted (NSFW) channels."),
        (command("imagine", prompt="a fox", channel=OTHER_CHANNEL),
         f"I only make images in <#{CHANNEL}>, <#{NSFW_CHANNEL}>."),
        (command("imagine", prompt=" ", locale="vi"), "Câu mô tả đang trống."),
    ]
    for payload, expected in cases:
        stack.dispatch(payload)
        answer = (await fake.wait_for("POST", callback(payload))).json
        assert answer["type"] == 4 and answer["data"]["flags"] & EPHEMERAL, answer
        assert answer["data"]["content"].startswith(expected), answer["data"]["content"]
    assert await stack.store.counts_by_status() == {}  # nothing was queued

    # The core's blocklist (in Discord's words) covers the prompt, not what to leave out, and not
    # age-restricted channels: Discord tells the core which those are.
    for payload in (command("imagine", prompt="a fox --no gore --steps 1"),
                    command("imagine", prompt="a GORE scene --steps 1", channel=NSFW_CHANNEL)):
        stack.dispatch(payload)
        answer = (await fake.wait_for("POST", callback(payload))).json
        assert "is queued" in answer["data"]["content"] and not answer["data"].get("flags", 0) & EPHEMERAL


async def test_a_429_is_waited_out_and_the_upload_retried(make_stack, fake):
    stack = await make_stack()  # the clock stands still: no progress edit, the first edit is the result
    fake.fail("PATCH", r"/webhooks/\d+/[^/]+/messages/@original", 429)
    payload = command("imagine", prompt="a fox in the snow --steps 2")
    stack.dispatch(payload)
    result = await fake.wait_for("PATCH", original(payload), has_result)
    limited = fake.find("PATCH", original(payload), status=429)
    assert len(limited) == 1 and limited[0].files[0].data == result.files[0].data
    assert fake.find("PATCH", original(payload)) == [result]  # throttled: no progress edit with a still clock
    assert Image.open(io.BytesIO(result.files[0].data)).format == "PNG"
    assert (await stack.wait_delivery(1)).delivery == "delivered"


async def test_a_result_too_large_for_the_channel_is_sent_compressed(make_stack, fake):
    stack = await make_stack()
    payload = command("imagine", prompt="a fox in the snow --steps 2", size_limit=2000)
    stack.dispatch(payload)
    result = await fake.wait_for("PATCH", original(payload), has_result)
    upload = result.files[0]
    assert upload.filename == f"{(await stack.service.job(1)).public_id}-0.jpg" and len(upload.data) <= 2000
    assert Image.open(io.BytesIO(upload.data)).format == "JPEG"
    assert "JPEG" in result.json["embeds"][0]["fields"][-1]["value"]
    assert result.json["embeds"][0]["image"]["url"] == f"attachment://{upload.filename}"
    assert (await stack.wait_delivery(1)).delivery == "delivered"


async def test_a_job_finishing_after_the_token_expired_is_sent_to_the_channel(make_stack, fake):
    stack = await make_stack()
    # The "queued" reply is held until the job is done and the clock is past the 15 minutes.
    release = fake.hold("POST", r"/interactions/\d+/[^/]+/callback")
    fake.fail("POST", rf"/channels/{CHANNEL}/messages", 429)  # the bot-token path honours 429 too
    payload = command("imagine", prompt="a fox in the snow --steps 2")
    stack.dispatch(payload)
    await fake.wait_for("POST", callback(payload), status=None)
    await stack.wait_job(1)
    stack.clock.advance(16 * 60)
    release.set()

    sent = await fake.wait_for("POST", rf"/channels/{CHANNEL}/messages")
    reply = fake.find("POST", callback(payload))[0]
    assert sent.json["content"] == f"<@{ALICE}> job #{short_id((await stack.service.job(1)).public_id)} is done."
    assert [int(u) for u in sent.json["allowed_mentions"]["users"]] == [ALICE]
    assert int(sent.json["message_reference"]["message_id"]) == int(reply.response["interaction"]["response_message_id"])
    assert Image.open(io.BytesIO(sent.files[0].data)).format == "PNG"
    assert sent.json["components"]  # the buttons come along
    assert len(fake.find("POST", rf"/channels/{CHANNEL}/messages", status=429)) == 1
    assert not fake.find("PATCH", original(payload))  # the expired token was not used
    assert (await stack.wait_delivery(1)).delivery == "delivered"
