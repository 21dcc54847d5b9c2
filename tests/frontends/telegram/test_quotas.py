"""Quotas through Telegram: a user past `[queue] max_queued_per_user` or `max_jobs_per_hour` is told
the limit in their language, in the status message their request got; the refused request queues
nothing and counts for nothing, other users are still served, and the bot's admins are exempt."""

from __future__ import annotations

from bot.core.jobs import Origin, short_id
from tests.helpers.telegram import ALICE, BOB, ROOT, TEARDOWN, buttons, is_result, replied_to

HOLDER = Origin("web", "holder", chat_id="web")
ALICE_VI = {**ALICE, "language_code": "vi"}  # Alice, her app set to Vietnamese


async def refused(bot, user: dict, text: str, expected: str) -> None:
    """`user` writes `text`; the status message the bot answers with ends up saying `expected`."""
    status = await bot.reply_to(bot.send(user, text))
    shown = await bot.status_text(status.result["message_id"], expected)
    assert shown.params["text"] == expected


def user_key(user: dict) -> str:
    return Origin("telegram", str(user["id"])).user_key


async def test_a_user_with_the_most_jobs_waiting_is_told_the_limit_and_others_are_still_served(make_stack):
    bot = await make_stack(queue={"max_queued_per_user": 1}, limits={"max_steps": 500})
    # Someone else's long job keeps the worker busy, so Alice's first job stays waiting.
    holder = await bot.service.submit("holding the worker --steps 500", HOLDER)
    await bot.wait_running(holder.job_id)

    status = await bot.reply_to(bot.send(ALICE, "/imagine a fox --steps 1"))
    (waiting,) = await bot.wait_job(ALICE)
    await bot.status_text(status.result["message_id"], f"#{short_id(waiting.public_id)} queued: position 1")
    await refused(bot, ALICE, "/imagine another fox --steps 1",
                  "Jobs you have waiting: 1; the limit is 1. Wait for one to finish or cancel one.")
    await refused(bot, ALICE_VI, "một con cáo --steps 1",  # a plain prompt in a private chat
                  "Bạn đang có 1 yêu cầu chờ; giới hạn là 1. Hãy đợi một yêu cầu xong hoặc hủy bớt.")
    assert [job.id for job in await bot.jobs_of(ALICE)] == [waiting.id]  # the refused requests queued nothing
    assert await bot.store.usage_last_hour(user_key(ALICE)) == 1  # nor counted

    bot.send(BOB, "/imagine a bear --steps 1")
    await bot.wait_job(BOB)
    for prompt in ("/imagine an owl --steps 1", "/imagine a hawk --steps 1"):
        bot.send(ROOT, prompt)
    assert len(await bot.wait_job(ROOT, 2)) == 2  # an admin is not held to the limit

    # Once her job is done, Alice may ask again.
    await bot.service.cancel(holder.job_id, TEARDOWN)
    assert (await bot.wait_delivery(waiting.id)).status == "done"
    bot.send(ALICE, "/imagine a fox again --steps 1")
    await bot.wait_job(ALICE, 2)


async def test_a_user_past_the_hourly_limit_is_told_the_limit_and_others_are_still_served(make_stack, fake_api):
    bot = await make_stack(queue={"max_jobs_per_hour": 2})
    first = bot.send(ALICE, "/imagine a fox --steps 1")
    bot.send(ALICE, "/imagine a second fox --steps 1")
    await bot.wait_job(ALICE, 2)
    # Finished jobs count for the hour too.
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == first))[0]

    text = "You have made 2 requests in the last hour; the limit is 2. Try again later."
    await refused(bot, ALICE, "/imagine a third fox --steps 1", text)
    await refused(bot, ALICE_VI, "một con cáo --steps 1",
                  "Bạn đã gửi 2 yêu cầu trong giờ qua; giới hạn là 2. Hãy thử lại sau.")
    # A button under her result asks for a new job as well: refused alike, in the status message it got.
    await bot.answer(bot.press(ALICE, photo.result, buttons(photo)["🔄 Reroll"]))
    status = await bot.reply_to(photo.result["message_id"])
    assert (await bot.status_text(status.result["message_id"], text)).params["text"] == text
    assert len(await bot.jobs_of(ALICE)) == 2  # nothing more was queued
    assert await bot.store.usage_last_hour(user_key(ALICE)) == 2  # nor counted

    bot.send(BOB, "/imagine a bear --steps 1")
    await bot.wait_job(BOB)
    for n in range(3):
        bot.send(ROOT, f"/imagine owl number {n} --steps 1")
    await bot.wait_job(ROOT, 3)
    assert await bot.store.usage_last_hour(user_key(ROOT)) == 3
