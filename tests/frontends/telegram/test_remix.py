"""Vary (Subtle), Vary (Strong) and Remix under a Telegram result, through python-telegram-bot against
the fake Bot API: Remix asks for the new prompt as a reply and varies the image with it."""

from __future__ import annotations

from tests.helpers.telegram import ALICE, BOB, buttons, is_result, replied_to


async def test_subtle_strong_and_remix_from_the_buttons_under_a_photo(make_stack, fake_api):
    bot = await make_stack(variations={"subtle": 0.25, "strong": 0.8})
    asked = bot.send(ALICE, "/imagine a red fox --steps 2 --seed 5 --no fog")
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    (source,) = await bot.jobs_of(ALICE)
    await bot.wait_delivery(source.id)
    data = buttons(photo)
    assert {"🎨 Vary (Subtle)", "🎨 Vary (Strong)", "✏️ Remix"} <= set(data)

    for label, count, strength in (("🎨 Vary (Subtle)", 2, 0.25), ("🎨 Vary (Strong)", 3, 0.8)):
        await bot.answer(bot.press(ALICE, photo.result, data[label]))
        job = (await bot.wait_job(ALICE, count))[-1]
        assert job.request.strength == strength and job.request.init_image.endswith(source.images[0].file)
        await bot.wait_delivery(job.id)

    # Remix: the bot asks (a reply the app opens at once, showing the old prompt)...
    await bot.answer(bot.press(ALICE, photo.result, data["✏️ Remix"]))
    question = (await fake_api.wait_for("sendMessage", lambda c: c.params["text"].startswith("Remix image 1 of #")))[0]
    assert replied_to(question) == photo.result["message_id"]
    assert question.params["text"].endswith("It was:\na red fox")
    assert question.params["reply_markup"]["force_reply"] in (True, "true")

    # ...someone else's reply is not the answer (a private chat of theirs: an ordinary prompt)...
    bot.send(BOB, "a green fox --steps 1", reply_to_message=question.result)
    (bobs,) = await bot.wait_job(BOB)
    assert bobs.request.init_image is None

    # ...Alice's reply is: a strong variation of the image with the new prompt and its flags.
    answer = bot.send(ALICE, "a blue fox --no snow", reply_to_message=question.result)
    await bot.reply_to(answer)
    remix = (await bot.wait_job(ALICE, 4))[-1]
    assert (remix.request.prompt, remix.request.negative_prompt) == ("a blue fox", "snow")
    assert remix.request.strength == 0.8 and remix.request.init_image.endswith(source.images[0].file)
    await bot.wait_delivery(remix.id)

    # The question is answered: another reply to it is a plain prompt again.
    again = bot.send(ALICE, "a purple fox --steps 1", reply_to_message=question.result)
    await bot.reply_to(again)
    last = (await bot.wait_job(ALICE, 5))[-1]
    assert last.request.prompt == "a purple fox" and last.request.init_image is None
