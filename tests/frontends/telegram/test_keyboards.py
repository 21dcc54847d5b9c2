"""Callback data and captions: within Telegram's sizes whatever the job looks like."""

from __future__ import annotations

import pytest

from bot.core.jobs import ImageResult, Job, Origin
from bot.core.request import GenerationRequest
from bot.frontends.telegram import keyboards
from bot.frontends.telegram.texts import caption

JOB = "a3f09c" + "f" * 18  # a public id: 24 hex characters
OLD_JOB = 2**63 - 1  # the largest internal id SQLite hands out, as buttons of older versions carry


def all_data(markup) -> list[str]:
    return [button.callback_data for row in markup.inline_keyboard for button in row]


def test_every_button_fits_64_bytes_and_decodes_to_what_it_says():
    # An album of ten, its message ids as large as a busy chat's: the delete button still names them.
    album_ids = list(range(2**40, 2**40 + 10))
    markups = [keyboards.single_result(JOB, "vi"), keyboards.progress(JOB, None),
               keyboards.album_result(JOB, 10, album_ids, "en")]
    for data in [d for markup in markups for d in all_data(markup)]:
        assert len(data.encode()) <= 64
        assert keyboards.decode(data).job == JOB
    assert keyboards.decode(keyboards.album_delete_data(JOB, album_ids)).message_ids == tuple(album_ids)
    assert keyboards.decode(f"v:{JOB}:3") == keyboards.Button("vary_strong", JOB, index=3)  # also older V buttons
    assert keyboards.decode(f"s:{JOB}:2") == keyboards.Button("vary_subtle", JOB, index=2)
    assert keyboards.decode(f"m:{JOB}:1") == keyboards.Button("remix", JOB, index=1)
    assert keyboards.decode(f"x:{JOB}:1001:1.2") == keyboards.Button("delete", JOB, message_ids=(1001, 1002, 1004))


def test_buttons_of_older_versions_name_the_internal_id_and_still_decode():
    assert keyboards.decode(f"r:{OLD_JOB}") == keyboards.Button("reroll", OLD_JOB)
    assert keyboards.decode("u:12:0") == keyboards.Button("upscale", 12, index=0)
    assert keyboards.decode("x:12:1001:1.2") == keyboards.Button("delete", 12, message_ids=(1001, 1002, 1004))


@pytest.mark.parametrize("data", ["", "r", "r:", "r:abc", "q:12", "v:12", "v:12:x", "r:12:3", "x:12:5:a.b",
                                  "x:12:5", "r:-1", "r:1" + "0" * 70, None, "r:" + JOB.upper(), "r:" + JOB[:-1],
                                  f"v:{JOB}", f"r:{JOB}:1"])
def test_data_this_bot_did_not_make_is_refused(data):
    assert keyboards.decode(data) is None


def test_album_ids_too_far_apart_fall_back_to_deleting_the_keyboard_message():
    ids = [10**18 + i * 10**15 for i in range(10)]
    data = keyboards.album_delete_data(JOB, ids)
    assert keyboards.decode(data) == keyboards.Button("delete", JOB)
    assert keyboards.decode(keyboards.album_delete_data(JOB, [5, 6, 9])).message_ids == (5, 6, 9)


def test_a_caption_stays_within_1024_characters_and_keeps_the_parameters():
    request = GenerationRequest(prompt="p" * 1000, negative_prompt="n" * 1000, model="demo", seed=4,
                                steps=20, guidance=7.5, width=512, height=768, count=4)
    job = Job(7, "done", request, Origin("telegram", "1"),
              images=tuple(ImageResult(f"job7-{i}.png", 4 + i) for i in range(4)), public_id=JOB)
    for locale in ("en", "vi"):
        text = caption(job, locale)
        assert len(text) <= 1024 and text.startswith("ppp")
        assert "#a3f09c ·" in text and "#7" not in text and "512x768" in text and "4, 5, 6, 7" in text and "CFG 7.5" in text
