"""Quotas through Discord: a user past `[queue] max_queued_per_user` or `max_jobs_per_hour` is told
the limit in their language, ephemerally; the refused request queues nothing and counts for nothing,
other users are still served, and the bot's admins (by id or by role) are exempt."""

from __future__ import annotations

from bot.core.jobs import Origin
from tests.helpers.discord import EPHEMERAL, TEARDOWN_ADMIN, callback, has_result, original
from tests.helpers.fake_discord import ADMIN, ADMIN_ROLE, ALICE, BOB, MODERATOR, click, command

HOLDER = Origin("web", "holder", chat_id="web")


async def ask(stack, fake, payload: dict) -> dict:
    """Dispatch an interaction and return the data of the bot's answer to it."""
    stack.dispatch(payload)
    reply = await fake.wait_for("POST", callback(payload))
    assert reply.json["type"] == 4, reply.json
    return reply.json["data"]


def queued(data: dict) -> bool:
    return "is queued" in data["content"] and not data.get("flags", 0) & EPHEMERAL


def refused(data: dict, text: str) -> bool:
    return data["content"] == text and bool(data.get("flags", 0) & EPHEMERAL)


def user_key(user: int) -> str:
    return Origin("discord", str(user)).user_key


async def test_a_user_with_the_most_jobs_waiting_is_told_the_limit_and_others_are_still_served(make_stack, fake):
    stack = await make_stack(queue={"max_queued_per_user": 1}, limits={"max_steps": 500})
    # Someone else's long job keeps the worker busy, so Alice's first job stays waiting.
    holder = await stack.service.submit("holding the worker --steps 500", HOLDER)
    await stack.wait_running(holder.job_id)

    assert queued(await ask(stack, fake, command("imagine", prompt="a fox --steps 1")))
    answer = await ask(stack, fake, command("imagine", prompt="another fox --steps 1"))
    assert refused(answer, "Jobs you have waiting: 1; the limit is 1. "
                           "Wait for one to finish or cancel one."), answer
    answer = await ask(stack, fake, command("imagine", prompt="một con cáo --steps 1", locale="vi"))
    assert refused(answer, "Bạn đang có 1 yêu cầu chờ; giới hạn là 1. Hãy đợi một yêu cầu xong hoặc hủy bớt."), answer
    assert await stack.store.count_unfinished(user_key(ALICE)) == 1  # the refused requests queued nothing
    assert await stack.store.usage_last_hour(user_key(ALICE)) == 1  # nor counted

    assert queued(await ask(stack, fake, command("imagine", prompt="a bear --steps 1", user=BOB)))
    for admin in (command("imagine", prompt="an owl --steps 1", user=ADMIN),
                  command("imagine", prompt="an owl --steps 1", user=ADMIN),
                  command("imagine", prompt="a hawk --steps 1", user=MODERATOR, roles=(ADMIN_ROLE,)),
                  command("imagine", prompt="a hawk --steps 1", user=MODERATOR, roles=(ADMIN_ROLE,))):
        assert queued(await ask(stack, fake, admin))
    assert await stack.store.count_unfinished(user_key(ADMIN)) == 2
    assert await stack.store.count_unfinished(user_key(MODERATOR)) == 2

    # Once her job is done, Alice may ask again.
    await stack.service.cancel(holder.job_id, TEARDOWN_ADMIN)
    (waiting,) = await stack.service.history(Origin("discord", str(ALICE)), 10)
    assert (await stack.wait_job(waiting.id)).status == "done"
    assert queued(await ask(stack, fake, command("imagine", prompt="a fox again --steps 1")))


async def test_a_user_past_the_hourly_limit_is_told_the_limit_and_others_are_still_served(make_stack, fake):
    stack = await make_stack(queue={"max_jobs_per_hour": 2})
    first = command("imagine", prompt="a fox --steps 1")
    assert queued(await ask(stack, fake, first))
    assert queued(await ask(stack, fake, command("imagine", prompt="a second fox --steps 1")))
    result = await fake.wait_for("PATCH", original(first), has_result)  # finished jobs count for the hour too

    answer = await ask(stack, fake, command("imagine", prompt="a third fox --steps 1"))
    text = "You have made 2 requests in the last hour; the limit is 2. Try again later."
    assert refused(answer, text), answer
    answer = await ask(stack, fake, command("imagine", prompt="một con cáo --steps 1", locale="vi"))
    assert refused(answer, "Bạn đã gửi 2 yêu cầu trong giờ qua; giới hạn là 2. Hãy thử lại sau."), answer
    # A button under her result asks for a new job as well: refused alike.
    reroll = click(f"imagebot:reroll:{(await stack.service.job(1)).public_id}", result.response)
    answer = await ask(stack, fake, reroll)
    assert refused(answer, text), answer
    assert len(await stack.service.history(Origin("discord", str(ALICE)), 10)) == 2  # nothing more was queued
    assert await stack.store.usage_last_hour(user_key(ALICE)) == 2  # nor counted

    assert queued(await ask(stack, fake, command("imagine", prompt="a bear --steps 1", user=BOB)))
    for _ in range(3):
        assert queued(await ask(stack, fake, command("imagine", prompt="an owl --steps 1", user=ADMIN)))
    assert await stack.store.usage_last_hour(user_key(ADMIN)) == 3
