"""The Telegram bot end to end: the real python-telegram-bot Application and HTTP layer, a real
store, registry, worker thread and service on the tiny model, against a fake Bot API server
(tests/helpers/fake_telegram.py) that feeds raw update JSON to getUpdates and records every call
the bot makes. The stack and the fixtures are in tests/helpers/telegram.py and conftest.py.

Everything is driven through updates (messages, commands, button presses) and observed through
the recorded calls and the store; waits are on recorded calls or job states, with timeouts.
"""

from __future__ import annotations

import io
import logging
import shutil
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

from bot.core.errors import UserError
from bot.core.jobs import Origin, short_id
from tests.helpers.fake_telegram import BOT_USER, Call
from tests.helpers.models import SMALL_DIT_TOML, add_pipeline_variant
from tests.helpers.ports import free_port
from tests.helpers.telegram import (ALICE, BOB, GROUP, LAN, ROOT, TOKEN, buttons, is_result, message_update, open_image,
                                    private, replied_to)

REPO = Path(__file__).resolve().parents[3]


# --- the main flow -----------------------------------------------------------------------------------


async def test_imagine_in_a_private_chat_ends_in_a_photo_with_buttons(make_stack, fake_api, caplog):
    caplog.set_level(logging.INFO)
    bot = await make_stack()
    # Registered at start (or, on a machine too busy to answer within the client's timeouts, by
    # the background reconnect right after).
    menus = await fake_api.wait_for("setMyCommands", count=2)
    assert len(menus) == 2 and {m.params.get("language_code") for m in menus} == {None, "vi"}
    assert [c["command"] for c in menus[0].params["commands"]] == [
        "imagine", "model", "queue", "cancel", "settings", "history", "describe", "help", "start"]

    asked = bot.send(ALICE, "/imagine a red fox in the snow --steps 2 --seed 7")
    status = await bot.reply_to(asked)
    assert status.params["text"] == "Queueing…"  # the answer comes at once; the job follows

    # The result, not a progress preview (which is a photo too when a step lands on the preview timer).
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    (job,) = await bot.jobs_of(ALICE)
    image = open_image(photo.file("photo"))
    assert image.format == "JPEG" and image.size == (64, 64)
    caption = photo.params["caption"]
    assert caption.startswith("a red fox in the snow\n") and "Seed: 7" in caption and f"#{short_id(job.public_id)}" in caption
    assert "2 steps" in caption and "demo" in caption and len(caption) <= 1024
    data = buttons(photo)
    assert sorted(d.split(":")[0] for d in data.values()) == ["m", "p", "r", "s", "u", "v", "x"]
    assert all(len(d.encode()) <= 64 and d.split(":")[1] == job.public_id for d in data.values())

    delivered = await bot.wait_delivery(job.id)
    assert delivered.status == "done" and delivered.images[0].seed == 7
    # The status message made way for the result.
    await fake_api.wait_for("deleteMessage", lambda c: int(c.params["message_id"]) == status.result["message_id"])

    # The lossless PNG on request.
    query = bot.press(ALICE, photo.result, data["📄 PNG"])
    assert (await bot.answer(query)).params["text"] == "Sending the PNG files…"
    document = await bot.reply_to(photo.result["message_id"], "sendDocument")
    png = open_image(document.file("document"))
    assert png.format == "PNG" and png.size == (64, 64) and "Seed: 7" in png.text["parameters"]

    assert logging.getLogger("httpx").level == logging.WARNING
    assert caplog.records and not [r for r in caplog.records if TOKEN in r.getMessage()]


async def test_several_images_come_as_an_album_and_buttons_work_after_a_restart(make_stack, fake_api):
    first = await make_stack()
    asked = first.send(ALICE, "/imagine a boat on a lake --n 2 --steps 2 --seed 3")
    album = await first.reply_to(asked, "sendMediaGroup")
    media = album.params["media"]
    assert len(media) == 2 and media[0]["caption"].startswith("a boat on a lake")
    sizes = [open_image(album.file(item["media"])).size for item in media]
    assert sizes == [(64, 64), (64, 64)]
    album_ids = [m["message_id"] for m in album.result]
    actions = await first.reply_to(album_ids[0])
    data = buttons(actions)
    assert {"V1", "V2", "S1", "S2", "R1", "R2", "U1", "U2", "🔄 Reroll", "📄 PNG", "🗑 Delete"} == set(data)
    (source,) = await first.jobs_of(ALICE)
    await first.wait_delivery(source.id)
    await first.stop()

    # A new process on the same database: the buttons of the old message still work.
    second = await make_stack()
    query = second.press(ALICE, actions.result, data["U2"])
    await second.answer(query)
    upscaled = (await fake_api.wait_for(
        "sendPhoto", lambda c: is_result(c) and replied_to(c) == actions.result["message_id"]))[0]
    assert open_image(upscaled.file("photo")).size == (128, 128)

    query = second.press(BOB, actions.result, data["V1"])  # anyone in the chat may ask for variations
    await second.answer(query)
    jobs = await second.wait_job(BOB)
    assert jobs[0].request.init_image.endswith(source.images[0].file)
    await second.wait_delivery(jobs[0].id)

    query = second.press(ALICE, actions.result, data["📄 PNG"])
    documents = await fake_api.wait_for("sendDocument", count=2)
    assert [open_image(d.file("document")).format for d in documents] == ["PNG", "PNG"]

    # Only the owner (or an admin) deletes.
    query = second.press(BOB, actions.result, data["🗑 Delete"])
    refused = await second.answer(query)
    assert "belongs to someone else" in refused.params["text"] and refused.params["show_alert"] in (True, "true")
    assert not fake_api.calls_of("deleteMessage", lambda c: int(c.params["message_id"]) in album_ids)
    query = second.press(ALICE, actions.result, data["🗑 Delete"])
    assert (await second.answer(query)).params["text"] == "Deleted."
    deleted = {int(c.params["message_id"]) for c in fake_api.calls_of("deleteMessage")}
    assert {*album_ids, actions.result["message_id"]} <= deleted


# --- chats, groups and what is ignored -----------------------------------------------------------------


async def test_groups_answer_only_commands_for_this_bot_and_allowed_chats(make_stack, fake_api):
    bot = await make_stack(telegram={"allowed_chats": [GROUP["id"]]})
    ignored = [
        bot.send(ALICE, "/imagine@otherbot a cat", chat=GROUP),
        bot.send(ALICE, "a cat, said in passing", chat=GROUP),
        bot.send(ALICE, "/frobnicate", chat=GROUP),
        bot.send(ALICE, chat=GROUP, sticker={"file_id": "s1", "file_unique_id": "s1", "type": "regular",
                                             "width": 512, "height": 512, "is_animated": False,
                                             "is_video": False}),
        bot.send(ROOT, "/imagine a dog that was edited", edited=True),
    ]
    asked = bot.send(ALICE, f"/imagine@{BOT_USER['username']} a cat in a group --steps 2", chat=GROUP)
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    assert int(photo.params["chat_id"]) == GROUP["id"]

    unknown = bot.send(ALICE, f"/frobnicate@{BOT_USER['username']}", chat=GROUP)
    assert "Unknown command /frobnicate" in (await bot.reply_to(unknown)).params["text"]
    refused = bot.send(ALICE, "/imagine a cat in private")  # Alice's private chat is not allowed
    assert "allowed_chats" in (await bot.reply_to(refused)).params["text"]
    sticker = bot.send(ROOT, sticker={"file_id": "s2", "file_unique_id": "s2", "type": "regular", "width": 512,
                                      "height": 512, "is_animated": False, "is_video": False})
    assert "I understand text" in (await bot.reply_to(sticker)).params["text"]  # admins' private chats are allowed
    help_ = bot.send(ROOT, "/help")
    assert "/imagine" in (await bot.reply_to(help_)).params["text"]

    assert not [c for c in fake_api.calls if replied_to(c) in ignored]
    jobs = [*await bot.jobs_of(ALICE), *await bot.jobs_of(ROOT)]
    assert [job.request.prompt for job in jobs] == ["a cat in a group"]


async def test_a_refiner_model_asked_to_draw_says_what_it_is_for(make_stack, models_dir, tiny_sdxl_refiner_dir):
    add_pipeline_variant(models_dir, "refiner", tiny_sdxl_refiner_dir)
    bot = await make_stack()
    asked = bot.send(ALICE, "/imagine a cat --model refiner")
    status = await bot.reply_to(asked)
    await bot.status_text(status.result["message_id"], "'refiner' is a refiner: it finishes the images of a base model")
    assert await bot.jobs_of(ALICE) == []


async def test_a_flux_model_refuses_a_negative_prompt_and_the_model_list_names_each_family(make_stack, models_dir,
                                                                                          tiny_dit_dir):
    add_pipeline_variant(models_dir, "flux", tiny_dit_dir("flux1-dev"), SMALL_DIT_TOML)
    bot = await make_stack()
    asked = bot.send(ALICE, "/imagine a cat --no blurry --model flux")
    status = await bot.reply_to(asked)
    await bot.status_text(status.result["message_id"],
                          str(UserError("family_no_negative", model="flux", family="FLUX.1 [dev]")))
    assert await bot.jobs_of(ALICE) == []
    listed = bot.send(ALICE, "/model")
    text = (await bot.reply_to(listed)).params["text"]
    assert "• demo (Stable Diffusion 1.x): -" in text and "• flux (FLUX.1 [dev]): -" in text, text


async def test_bad_input_gets_a_clear_reply_and_queues_nothing(make_stack):
    bot = await make_stack()
    cases = {
        "/imagine": "The prompt is empty",
        "/imagine " + "x" * 5000: "5000 characters long; the limit is 1000",
        "/imagine a cat --model nosuch": "There is no model 'nosuch'. Available: demo",
        "/imagine a cat --steps 100000": "steps must be 1-50, got 100000",
        "/imagine a cat --flavour spicy": "Unknown option --flavour",
        "/imagine a cat --refiner 0.7": "Model 'demo' has no refiner",
    }
    asked = {bot.send(ALICE, text): expected for text, expected in cases.items()}
    for message_id, expected in asked.items():
        status = await bot.reply_to(message_id)
        await bot.status_text(status.result["message_id"], expected)
    lan = bot.send(LAN, "/imagine")
    status = await bot.reply_to(lan)
    await bot.status_text(status.result["message_id"], "Câu mô tả đang trống")

    cancel = bot.send(ALICE, "/cancel soon")
    assert (await bot.reply_to(cancel)).params["text"].startswith("Use /cancel for your latest job")
    cancel = bot.send(ALICE, "/cancel")
    assert (await bot.reply_to(cancel)).params["text"] == "You have no job waiting or running."
    cancel = bot.send(ALICE, "/cancel 99999")  # a short id of none of Alice's unfinished jobs
    assert (await bot.reply_to(cancel)).params["text"] == "There is no job #99999."
    assert await bot.jobs_of(ALICE) == [] and await bot.jobs_of(LAN) == []


# --- commands --------------------------------------------------------------------------------------


async def test_model_lists_for_everyone_and_switches_for_admins(make_stack, fake_api, models_dir,
                                                                tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "finetuned", tiny_pipeline_dir, 'kind = "pipeline"\n[defaults]\nsteps = 2\n')
    bot = await make_stack()
    listed = bot.send(ALICE, "/model")
    text = (await bot.reply_to(listed)).params["text"]
    assert "this chat uses demo; the default is demo" in text and "• finetuned" in text
    denied = bot.send(ALICE, "/model finetuned")
    assert (await bot.reply_to(denied)).params["text"] == "Only admins can do that."

    in_group = bot.send(ROOT, "/model finetuned", chat=GROUP)
    assert (await bot.reply_to(in_group)).params["text"] == "This chat now uses the model finetuned."
    listed = bot.send(BOB, "/model", chat=GROUP)
    assert "this chat uses finetuned; the default is demo" in (await bot.reply_to(listed)).params["text"]
    listed = bot.send(ALICE, "/model")  # other chats keep the default
    assert "this chat uses demo" in (await bot.reply_to(listed)).params["text"]
    wrong = bot.send(ROOT, "/model nosuch")
    assert "There is no model 'nosuch'" in (await bot.reply_to(wrong)).params["text"]

    everywhere = bot.send(ROOT, "/model default finetuned")
    assert "every chat is now finetuned" in (await bot.reply_to(everywhere)).params["text"]
    add_pipeline_variant(models_dir, "fresh", tiny_pipeline_dir)
    reload = bot.send(ROOT, "/model reload")
    assert "Added: fresh." in (await bot.reply_to(reload)).params["text"]
    denied = bot.send(BOB, "/model reload")
    assert (await bot.reply_to(denied)).params["text"] == "Only admins can do that."

    asked = bot.send(BOB, "/imagine a dog --steps 2", chat=GROUP)
    await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked)
    (job,) = await bot.jobs_of(BOB)
    assert job.request.model == "finetuned"


async def test_chat_settings_apply_to_later_requests(make_stack, fake_api):
    bot = await make_stack()
    denied = bot.send(ALICE, "/settings --ar 2:1", chat=GROUP)
    assert "only its admins" in (await bot.reply_to(denied)).params["text"]
    fake_api.chat_admins.add((GROUP["id"], ALICE["id"]))
    for text, expected in [("/settings --seed 5", "Give only options"),
                           ("/settings --steps 100000", "steps must be 1-50, got 100000"),
                           ("/settings --ar 2:1 --steps 2 --no blurry", "are now: --ar 2:1 --steps 2 --no blurry")]:
        asked = bot.send(ALICE, text, chat=GROUP)
        assert expected in (await bot.reply_to(asked)).params["text"]
    shown = bot.send(BOB, "/settings", chat=GROUP)
    assert "--ar 2:1 --steps 2 --no blurry" in (await bot.reply_to(shown)).params["text"]

    asked = bot.send(BOB, "/imagine a wide valley", chat=GROUP)
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    (job,) = await bot.jobs_of(BOB)
    assert job.request.width > job.request.height and job.request.negative_prompt == "blurry"
    assert open_image(photo.file("photo")).size == (job.request.width, job.request.height)
    assert "Not: blurry" in photo.params["caption"]

    cleared = bot.send(ALICE, "/settings clear", chat=GROUP)
    assert "no default options any more" in (await bot.reply_to(cleared)).params["text"]
    flags = await bot.service.default_flags(Origin("telegram", str(BOB["id"]), chat_id=str(GROUP["id"])))
    assert flags["chat"] is None


async def test_queue_progress_cancel_and_history(make_stack, fake_api):
    bot = await make_stack(limits={"max_steps": 500})
    slow = bot.send(ALICE, "a very slow lighthouse --steps 400 --size 32x32")  # plain text: a prompt
    slow_status = (await bot.reply_to(slow)).result["message_id"]
    (slow_job,) = await bot.wait_job(ALICE)
    await bot.wait_running(slow_job.id)
    waiting = bot.send(ALICE, "/imagine a quick cat --steps 2")
    waiting_status = (await bot.reply_to(waiting)).result["message_id"]
    (_, waiting_job) = await bot.wait_job(ALICE, 2)
    await bot.status_text(waiting_status, f"#{short_id(waiting_job.public_id)} queued: position 1")

    # The running job's status message shows its steps (as text, or as the caption of its preview).
    def progress_of_slow(call: Call) -> bool:
        shown = call.params.get("text") or call.params.get("caption") or ""
        media = call.params.get("media")
        shown += media.get("caption", "") if isinstance(media, dict) else ""
        return f"#{short_id(slow_job.public_id)}" in shown and "step" in shown
    preview = (await fake_api.wait_for("sendPhoto", progress_of_slow))[0]

    queue = bot.send(ALICE, "/queue")
    text = (await bot.reply_to(queue)).params["text"]
    assert f"#{short_id(slow_job.public_id)} running" in text and f"#{short_id(waiting_job.public_id)} waiting, position 1" in text

    cancel = bot.send(ALICE, f"/cancel {short_id(waiting_job.public_id)}")  # as the status message names it
    assert (await bot.reply_to(cancel)).params["text"] == f"#{short_id(waiting_job.public_id)} cancelled."
    await bot.status_text(waiting_status, f"#{short_id(waiting_job.public_id)} was cancelled.")

    # The Cancel button under the running job's progress stops it.
    query = bot.press(ALICE, preview.result, buttons(preview)["✖ Cancel"])
    assert (await bot.answer(query)).params["text"] == f"#{short_id(slow_job.public_id)} stops at its next step."
    await fake_api.wait_for("sendMessage", lambda c: replied_to(c) == slow and "was cancelled" in c.params["text"])
    await bot.wait_delivery(slow_job.id)
    assert (await bot.service.job(slow_job.id)).status == "cancelled"
    # The preview replaced the text status message, and no edit repeated the one before it.
    assert fake_api.calls_of("deleteMessage", lambda c: int(c.params["message_id"]) == slow_status)
    captions = [c.params.get("caption") for c in fake_api.calls_of("editMessageCaption")
                if int(c.params["message_id"]) == preview.result["message_id"]]
    assert all(a != b for a, b in zip(captions, captions[1:]))

    history = bot.send(ALICE, "/history")
    text = (await bot.reply_to(history)).params["text"]
    assert f"#{short_id(slow_job.public_id)} cancelled" in text and f"#{short_id(waiting_job.public_id)} cancelled" in text


# --- delivery that has to try harder -----------------------------------------------------------------


async def test_a_429_with_retry_after_is_waited_out_and_retried(make_stack, fake_api):
    bot = await make_stack(telegram={"previews": False})
    fake_api.fail("sendPhoto", 429, "Too Many Requests: retry after 1", {"retry_after": 1})
    asked = bot.send(ALICE, "/imagine a busy harbour --steps 2")
    calls = await fake_api.wait_for("sendPhoto", count=2)
    assert [c.status for c in calls] == [429, 200]
    assert calls[0].params["caption"] == calls[1].params["caption"] and replied_to(calls[1]) == asked
    (job,) = await bot.jobs_of(ALICE)
    await bot.wait_delivery(job.id)


async def test_network_errors_are_retried_and_a_blocked_bot_gives_up(make_stack, fake_api):
    bot = await make_stack(telegram={"previews": False})
    fake_api.fail("sendPhoto", 502, "Bad Gateway", times=2)
    asked = bot.send(ALICE, "/imagine a stormy sea --steps 2")
    calls = await fake_api.wait_for("sendPhoto", count=3)
    assert [c.status for c in calls] == [502, 502, 200] and replied_to(calls[2]) == asked
    (job,) = await bot.jobs_of(ALICE)
    await bot.wait_delivery(job.id)

    fake_api.fail("sendPhoto", 403, "Forbidden: bot was blocked by the user", times=100)
    bot.send(BOB, "/imagine a quiet pond --steps 2")
    (blocked,) = await bot.wait_job(BOB)
    await bot.wait_delivery(blocked.id, "failed")
    assert len(fake_api.calls_of("sendPhoto", lambda c: int(c.params["chat_id"]) == BOB["id"])) == 1


async def test_a_result_that_could_not_be_sent_is_delivered_after_a_restart(make_stack, fake_api):
    first = await make_stack(telegram={"previews": False})
    fake_api.fail("sendPhoto", 502, "Bad Gateway", times=1000)
    asked = first.send(ALICE, "/imagine a lighthouse in fog --steps 2")
    status = (await first.reply_to(asked)).result["message_id"]
    await fake_api.wait_for("sendPhoto", count=2)  # tried, and tried again
    (job,) = await first.jobs_of(ALICE)
    await first.stop()
    fake_api.heal("sendPhoto")

    second = await make_stack(telegram={"previews": False})
    photo = (await fake_api.wait_for("sendPhoto", lambda c: c.ok and replied_to(c) == asked))[0]
    assert f"#{short_id(job.public_id)}" in photo.params["caption"]
    await second.wait_delivery(job.id)
    await fake_api.wait_for("deleteMessage", lambda c: int(c.params["message_id"]) == status)


async def test_a_job_interrupted_by_a_restart_runs_again_and_is_delivered(make_stack, fake_api):
    settings = {"queue": {"shutdown_grace": 0.2}, "limits": {"max_steps": 500}, "telegram": {"previews": False}}
    first = await make_stack(**settings)
    asked = first.send(ALICE, "/imagine a long exposure of stars --steps 200 --size 32x32")
    (job,) = await first.wait_job(ALICE)
    await first.wait_running(job.id)
    await first.stop()  # mid-job: the service puts it back in the queue
    second = await make_stack(**settings)
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    assert open_image(photo.file("photo")).size == (32, 32)
    done = await second.wait_delivery(job.id)
    assert done.status == "done" and done.attempts >= 2


async def test_a_bot_api_out_of_reach_at_start_is_tried_again_and_a_refused_token_turns_the_bot_off(
        make_stack, fake_api, caplog):
    fake_api.fail("getMe", 502, "Bad Gateway")
    bot = await make_stack()  # returns at once: the rest of the service does not wait for Telegram
    help_ = bot.send(ALICE, "/help")
    assert "/imagine" in (await bot.reply_to(help_)).params["text"]
    assert [c.status for c in fake_api.calls_of("getMe")] == [502, 200]
    await bot.stop(cancel_jobs=True)

    calls = len(fake_api.calls)
    refused = await make_stack(token="987654:a-token-telegram-does-not-know")
    assert "refused TELEGRAM_TOKEN" in caplog.text and "a-token-telegram-does-not-know" not in caplog.text
    assert len(fake_api.calls) == calls  # nothing was sent with it, and no retries follow
    await refused.stop()


# --- webhook mode ------------------------------------------------------------------------------------


async def test_webhook_mode_takes_updates_only_with_the_secret_token(make_stack, fake_api):
    port = free_port()
    settings = {"mode": "webhook", "webhook_url": "https://bot.example/tg/hook", "webhook_port": port}
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        await make_stack(telegram=settings)  # a webhook without a secret would take anyone's updates
    bot = await make_stack(webhook_secret="hook-secret_0123456789", telegram=settings)
    (hook,) = fake_api.calls_of("setWebhook")
    assert hook.params["url"] == "https://bot.example/tg/hook"
    assert hook.params["secret_token"] == "hook-secret_0123456789"

    forged = message_update(fake_api, ROOT, "/imagine a forged request")
    real = message_update(fake_api, ALICE, "/help")
    async with aiohttp.ClientSession() as http:
        url = f"http://127.0.0.1:{port}/tg/hook"
        response = await http.post(url, json={"update_id": 1, **forged},
                                   headers={"X-Telegram-Bot-Api-Secret-Token": "wrong"})
        assert response.status == 403
        response = await http.post(url, json={"update_id": 2, **real},
                                   headers={"X-Telegram-Bot-Api-Secret-Token": "hook-secret_0123456789"})
        assert response.status == 200
    assert "/imagine" in (await bot.reply_to(real["message"]["message_id"])).params["text"]
    assert not [c for c in fake_api.calls if replied_to(c) == forged["message"]["message_id"]]
    assert await bot.jobs_of(ROOT) == []


# --- trust and safety ----------------------------------------------------------------------------------


async def test_a_blocked_word_in_a_telegram_prompt_is_refused_with_the_reason(make_stack, fake_api):
    bot = await make_stack(moderation={"blocklist": ["gore"]})
    asked = bot.send(ALICE, "/imagine a GORE scene --steps 1")
    status = await bot.reply_to(asked)
    await bot.status_text(status.result["message_id"], "The prompt contains 'gore', which is not allowed here.")
    lan = bot.send(LAN, "a gore scene")  # a plain prompt in a private chat, in Vietnamese
    status = await bot.reply_to(lan)
    await bot.status_text(status.result["message_id"], "Câu mô tả có 'gore'")
    assert await bot.jobs_of(ALICE) == [] and await bot.jobs_of(LAN) == []


async def test_admins_ban_and_unban_by_id_or_reply_and_the_user_is_told_why(make_stack, fake_api):
    bot = await make_stack()
    refused = bot.send(BOB, f"/ban {ALICE['id']} spam")
    assert (await bot.reply_to(refused)).params["text"] == "Only admins can do that."
    no_reason = bot.send(ROOT, f"/ban {ALICE['id']}")
    assert (await bot.reply_to(no_reason)).params["text"] == "Say why: the banned user is shown the reason."
    usage = bot.send(ROOT, "/ban spam")
    assert (await bot.reply_to(usage)).params["text"].startswith("Use /ban USER_ID REASON")

    banned = bot.send(ROOT, f"/ban {ALICE['id']} posting spam")
    assert (await bot.reply_to(banned)).params["text"] == f"User {ALICE['id']} is banned: posting spam"
    asked = bot.send(ALICE, "/imagine a fox --steps 1")
    status = await bot.reply_to(asked)
    await bot.status_text(status.result["message_id"], "You cannot use this bot: posting spam")

    # In a group, as a reply to the user's message.
    said = message_update(fake_api, BOB, "hello", GROUP)["message"]
    banned = bot.send(ROOT, "/ban rude", chat=GROUP, reply_to_message=said)
    assert (await bot.reply_to(banned)).params["text"] == f"User {BOB['id']} is banned: rude"
    unbanned = bot.send(ROOT, "/unban", chat=GROUP, reply_to_message=said)
    assert (await bot.reply_to(unbanned)).params["text"] == f"User {BOB['id']} may use the bot again."
    unbanned = bot.send({**ROOT, "language_code": "vi"}, f"/unban {ALICE['id']}")
    assert (await bot.reply_to(unbanned)).params["text"] == f"Người dùng {ALICE['id']} đã được dùng bot trở lại."
    asked = bot.send(ALICE, "/imagine a fox --steps 1")
    await bot.wait_job(ALICE)

    log = await bot.service.audit_log(Origin("telegram", str(ROOT["id"]), is_admin=True))
    assert [(e["actor"], e["action"], e["detail"]["user"]) for e in log] == [
        (f"telegram:{ROOT['id']}", action, f"telegram:{user['id']}")
        for action, user in (("unban", ALICE), ("unban", BOB), ("ban", BOB), ("ban", ALICE))]


async def test_buttons_from_before_public_ids_keep_working_for_their_owner(make_stack, fake_api):
    """Results sent by older versions carry the internal job number in their callback data."""
    bot = await make_stack(telegram={"previews": False})
    asked = bot.send(ALICE, "/imagine a fox --steps 1")
    photo = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    (job,) = await bot.jobs_of(ALICE)
    assert all(data.split(":")[1] == job.public_id for data in buttons(photo).values())
    query = bot.press(BOB, photo.result, f"x:{job.id}")
    assert (await bot.answer(query)).params["text"].startswith(f"Job #{job.id} belongs to someone else")
    query = bot.press(ALICE, photo.result, f"x:{job.id}")
    assert (await bot.answer(query)).params["text"] == "Deleted."


async def test_a_ban_in_a_forum_topic_names_the_user_given_not_the_topics_author(make_stack, fake_api):
    """In a topic every message replies to the topic's first message; that is not whom /ban is about."""
    bot = await make_stack()
    forum = {**GROUP, "is_forum": True}
    root = {"message_id": 77, "date": int(time.time()), "chat": forum, "from": BOB,
            "forum_topic_created": {"name": "art", "icon_color": 7322096}}
    banned = bot.send(ROOT, f"/ban {ALICE['id']} spam", chat=forum, message_thread_id=77, is_topic_message=True,
                      reply_to_message=root)
    assert (await bot.reply_to(banned)).params["text"] == f"User {ALICE['id']} is banned: spam"
    assert f"telegram:{BOB['id']}" not in await bot.store.bans()


# --- image prompts -------------------------------------------------------------------------------------

SHAPES_PROMPT = "a red circle on a blue background --model shapes --seed 7"


def shapes_photo() -> tuple[Image.Image, bytes]:
    """A green square on yellow, as a phone would send it: a JPEG, larger than the model draws."""
    image = Image.new("RGB", (32, 32), (240, 220, 20))
    image.paste((20, 160, 40), (8, 8, 24, 24))
    image = image.resize((128, 128), Image.Resampling.NEAREST)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=95)
    return image, out.getvalue()


def distance(a: Image.Image, b: Image.Image) -> float:
    size = (32, 32)
    return float(np.abs(np.asarray(a.convert("RGB").resize(size), dtype=float)
                        - np.asarray(b.convert("RGB").resize(size), dtype=float)).mean())


def add_shapes_model(models_dir) -> None:
    """The shipped demo model (trained on coloured shapes), whose VAE keeps what an image shows."""
    shutil.copytree(REPO / "models" / "demo", models_dir / "shapes")


async def test_a_photo_with_a_caption_is_drawn_from(make_stack, fake_api, models_dir):
    add_shapes_model(models_dir)
    bot = await make_stack(telegram={"previews": False})
    source, jpeg = shapes_photo()
    small = {**fake_api.add_file("photo-small", jpeg[:100]), "width": 32, "height": 32}
    large = {**fake_api.add_file("photo-large", jpeg), "width": 128, "height": 128}
    asked = bot.send(ALICE, photo=[small, large], caption=f"{SHAPES_PROMPT} --strength 0.3")
    drawn = (await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked))[0]
    assert fake_api.downloads == ["photo-large"]  # the largest size, fetched from Telegram's file URL

    text_only = bot.send(ALICE, SHAPES_PROMPT)
    await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == text_only)
    from_image, from_text = sorted(await bot.jobs_of(ALICE), key=lambda job: job.id)
    assert from_image.request.strength == 0.3 and from_image.request.init_image is not None
    assert from_text.request.init_image is None and from_text.request.seed == from_image.request.seed
    outputs = bot.config.storage.outputs_path()
    image_result = Image.open(outputs / from_image.images[0].file)
    text_result = Image.open(outputs / from_text.images[0].file)
    assert distance(image_result, source) < distance(text_result, source) - 10
    assert drawn.params["caption"].startswith("a red circle on a blue background")
    # The upload lies with the job: Telegram's JPEG stays a JPEG, without the phone's metadata.
    kept = Image.open(from_image.request.init_image)
    assert kept.format == "JPEG" and kept.size == (128, 128) and not kept.getexif()


async def test_image_prompts_in_groups_replies_and_refusals(make_stack, fake_api, models_dir):
    bot = await make_stack(telegram={"previews": False}, limits={"max_upload_bytes": 200_000,
                                                                  "max_upload_pixels": 512 * 512})
    _, jpeg = shapes_photo()
    photo = [{**fake_api.add_file("p1", jpeg), "width": 128, "height": 128}]
    ignored = bot.send(ALICE, chat=GROUP, photo=photo, caption="my holiday")  # not for the bot
    wrong_bot = bot.send(ALICE, chat=GROUP, photo=photo, caption="/imagine@otherbot a cat")
    asked = bot.send(ALICE, chat=GROUP, photo=photo, caption="/imagine a cat in a group --steps 1")
    await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == asked)

    # /imagine in reply to a picture (here an image sent as a file) starts from that picture.
    document = {**fake_api.add_file("d1", jpeg), "file_name": "cat.jpg", "mime_type": "image/jpeg"}
    picture = {"message_id": fake_api.next_message_id(), "date": int(time.time()), "chat": private(BOB),
               "from": BOB, "document": document}
    replying = bot.send(BOB, "/imagine a dog --steps 1 --iw 2", reply_to_message=picture)
    await fake_api.wait_for("sendPhoto", lambda c: is_result(c) and replied_to(c) == replying)
    (dog,) = await bot.jobs_of(BOB)
    assert dog.request.init_image is not None and dog.request.strength == 0.2

    # Refused with a clear answer: no caption; a file Telegram says is too large (never fetched);
    # more pixels than allowed (refused from the header, before decoding).
    no_caption = bot.send(BOB, photo=photo)
    assert "Add a caption" in (await bot.reply_to(no_caption)).params["text"]
    big = [{"file_id": "huge", "file_unique_id": "u-huge", "file_size": 5_000_000, "width": 2560, "height": 1920}]
    too_big = bot.send(BOB, photo=big, caption="a cat")
    assert (await bot.reply_to(too_big)).params["text"] == "The image is 4.8 MiB; the limit is 0.2 MiB."
    wide = io.BytesIO()
    Image.new("RGB", (1024, 1024)).save(wide, format="PNG")
    fake_api.add_file("wide", wide.getvalue())
    many_pixels = bot.send(BOB, photo=[{"file_id": "wide", "file_unique_id": "u-wide", "width": 1024,
                                        "height": 1024}], caption="a cat")
    status = (await bot.reply_to(many_pixels)).result["message_id"]
    assert "1024x1024 pixels; the limit is 262144" in (await bot.status_text(status, "pixels")).params["text"]

    assert "huge" not in fake_api.downloads
    assert not [c for c in fake_api.calls if replied_to(c) in (ignored, wrong_bot)]
    assert [job.request.prompt for job in await bot.jobs_of(ALICE)] == ["a cat in a group"]
    assert len(await bot.jobs_of(BOB)) == 1


async def test_describe_suggests_prompts_and_a_button_imagines_one(make_stack, fake_api, tmp_path):
    from tests.helpers.blip import save_tiny_blip

    bot = await make_stack(telegram={"previews": False},
                           describe={"model": str(save_tiny_blip(tmp_path / "blip")), "device": "cpu"})
    _, jpeg = shapes_photo()
    picture = {"message_id": fake_api.next_message_id(), "date": int(time.time()), "chat": private(ALICE),
               "from": ALICE, "photo": [{**fake_api.add_file("pic", jpeg), "width": 128, "height": 128}]}
    asked = bot.send(ALICE, "/describe", reply_to_message=picture)
    answer = await bot.reply_to(asked)
    lines = answer.params["text"].splitlines()
    assert lines[0] == "Prompts for this picture:" and lines[-1] == "Tap a number to imagine it."
    prompts = [line.split(". ", 1)[1] for line in lines[1:-1]]
    assert 1 <= len(prompts) <= 4 and [line.split(". ")[0] for line in lines[1:-1]] == \
        [str(n) for n in range(1, len(prompts) + 1)]
    data = buttons(answer)
    assert list(data.values()) == [f"ds:{n}" for n in range(1, len(prompts) + 1)]

    query = bot.press(BOB, answer.result, f"ds:{len(prompts)}")  # anyone in the chat may imagine one
    await bot.answer(query)
    (job,) = await bot.wait_job(BOB)
    assert job.request.prompt == prompts[-1] and job.request.init_image is None

    bare = bot.send(ALICE, "/describe")
    assert "Reply to a picture with /describe" in (await bot.reply_to(bare)).params["text"]
    captioned = bot.send(ALICE, photo=picture["photo"], caption="/describe")
    assert (await bot.reply_to(captioned)).params["text"].startswith("Prompts for this picture:")
