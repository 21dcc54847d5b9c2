"""Discord may refuse an interaction's webhook before its 15 minutes are up (an invalid token, the
response message or the webhook unknown). The result then goes to the channel with the bot token,
mentioning its user, instead of being dropped or marked failed."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from bot.core.jobs import Origin, short_id
from tests.helpers.discord import TEARDOWN_ADMIN, Clock, callback, original
from tests.helpers.fake_discord import ALICE, CHANNEL, command

REFUSALS = {
    "invalid-token": (401, {"message": "Invalid Webhook Token", "code": 50027}),
    "unknown-webhook": (404, {"message": "Unknown Webhook", "code": 10015}),
    "unknown-message": (404, {"message": "Unknown Message", "code": 10008}),
}


async def imagine_with_progress(stack, fake) -> tuple[dict, int]:
    """/imagine answered while another job holds the worker, so its progress edits come after the
    "queued" reply; returns the payload and the job id."""
    holder = await stack.service.submit("holding the worker --steps 500", Origin("web", "holder", chat_id="web"))
    await stack.wait_running(holder.job_id)
    payload = command("imagine", prompt="a fox in the snow --steps 3")
    stack.dispatch(payload)
    await fake.wait_for("POST", callback(payload))
    await stack.service.cancel(holder.job_id, TEARDOWN_ADMIN)
    return payload, holder.job_id + 1


@pytest.mark.parametrize("refusal", REFUSALS, ids=list(REFUSALS))
@pytest.mark.parametrize("refused_edit", ["result", "progress"])
async def test_a_refused_interaction_webhook_sends_the_result_to_the_channel(make_stack, fake, refusal, refused_edit):
    status, body = REFUSALS[refusal]
    fake.fail("PATCH", r"/webhooks/\d+/[^/]+/messages/@original", status, body)
    if refused_edit == "result":
        stack = await make_stack()  # the clock stands still: no progress edit, the first edit is the result
        payload = command("imagine", prompt="a fox in the snow --steps 2")
        stack.dispatch(payload)
        job_id = 1
    else:  # two seconds pass per clock reading: the first progress edit is let through, and refused
        stack = await make_stack(clock=Clock(step=2.0), limits={"max_steps": 500})
        payload, job_id = await imagine_with_progress(stack, fake)

    sent = await fake.wait_for("POST", rf"/channels/{CHANNEL}/messages")
    assert sent.json["content"] == f"<@{ALICE}> job #{short_id((await stack.service.job(job_id)).public_id)} is done."
    assert [int(u) for u in sent.json["allowed_mentions"]["users"]] == [ALICE]
    reply = fake.find("POST", callback(payload))[0]
    assert int(sent.json["message_reference"]["message_id"]) == int(reply.response["interaction"]["response_message_id"])
    assert Image.open(io.BytesIO(sent.files[0].data)).format == "PNG"
    assert sent.json["components"]  # the buttons come along
    assert (await stack.wait_delivery(job_id)).delivery == "delivered"

    edits = fake.find("PATCH", original(payload), status=None)
    assert [edit.status for edit in edits] == [status]  # refused once, then the token was left alone
    assert ("embeds" in (edits[0].json or {})) == (refused_edit == "result")
    assert len(fake.find("POST", rf"/channels/{CHANNEL}/messages")) == 1
