"""An Origin survives the store: written as JSON, read back the same; and rows written by earlier
versions (everything in `message_ids`) are still read, into the fields they now have."""

from __future__ import annotations

import json

from bot.core.jobs import Origin


def test_an_origin_reads_back_as_written():
    origin = Origin("discord", "7", chat_id="42", user_name="alice", reply={"interaction_id": 99}, locale="vi",
                    is_admin=True, manages_chat=True, guild_id=5, upload_limit=25 * 1024 * 1024)
    assert Origin.from_json(origin.to_json()) == origin


def test_a_discord_row_of_an_earlier_version():
    row = json.dumps({"platform": "discord", "user_id": "7", "chat_id": "42", "user_name": "alice",
                      "message_ids": {"guild_id": 5, "interaction_id": 99, "filesize_limit": 8388608},
                      "locale": "en-US", "is_admin": False, "manages_chat": False})
    origin = Origin.from_json(row)
    assert (origin.guild_id, origin.upload_limit, origin.reply) == (5, 8388608, {"interaction_id": 99})
    assert (origin.user_id, origin.chat_id, origin.locale) == ("7", "42", "en-US")


def test_a_telegram_row_of_an_earlier_version():
    row = json.dumps({"platform": "telegram", "user_id": "7", "chat_id": "-100", "user_name": "bob",
                      "message_ids": {"reply_to": 10, "status": 11, "thread": None}, "locale": "vi",
                      "is_admin": False, "manages_chat": False})
    origin = Origin.from_json(row)
    assert origin.reply == {"reply_to": 10, "status": 11, "thread": None}
    assert (origin.guild_id, origin.upload_limit) == (None, None)


def test_a_row_without_reply_targets():
    origin = Origin.from_json(json.dumps({"platform": "web", "user_id": "alice", "message_ids": {}}))
    assert origin == Origin("web", "alice")
