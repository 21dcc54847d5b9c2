"""/model, /admin, /settings, /queue, /cancel, /history: admin rights are checked on our side (config user
and role ids), whatever the command's default permissions say."""

from __future__ import annotations

import pytest

from bot.core.jobs import Origin, short_id
from bot.frontends.discord.strings import render
from tests.helpers.discord import EPHEMERAL, callback
from tests.helpers.fake_discord import (ADMIN, ADMIN_ROLE, ALICE, BOB, CHANNEL, GUILD, MODERATOR, OTHER_CHANNEL,
                                                  autocomplete, command, subcommand, subcommand_autocomplete)
from tests.helpers.models import add_pipeline_variant

MANAGE_GUILD = 1 << 5  # the "Manage Server" permission bit


async def ask(stack, fake, payload: dict) -> dict:
    stack.dispatch(payload)
    return (await fake.wait_for("POST", callback(payload))).json


async def test_model_admin_versus_non_admin(make_stack, fake, models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "finetuned", tiny_pipeline_dir, 'kind = "pipeline"\n')
    stack = await make_stack()
    in_channel = Origin("discord", str(BOB), chat_id=str(CHANNEL))
    elsewhere = Origin("discord", str(BOB), chat_id=str(OTHER_CHANNEL))

    listing = await ask(stack, fake, command("model", user=BOB))
    assert listing["data"]["flags"] & EPHEMERAL
    assert listing["data"]["content"].splitlines() == ["Models (default here: demo):",
                                                       "• **demo** · Stable Diffusion 1.x (default)",
                                                       "• **finetuned** · Stable Diffusion 1.x"]

    for payload in (command("model", user=BOB, default="finetuned"),
                    command("model", user=BOB, default="finetuned", scope="global"),
                    command("model", user=BOB, reload=True),
                    command("model", user=BOB, roles=(ADMIN_ROLE + 1,), default="finetuned")):
        answer = await ask(stack, fake, payload)
        assert answer["data"]["content"] == "Only admins can do that." and answer["data"]["flags"] & EPHEMERAL
    assert await stack.service.default_model(in_channel) == "demo"

    answer = await ask(stack, fake, command("model", user=ADMIN, default="finetuned"))
    assert answer["data"]["content"] == "finetuned is now the default model in this channel."
    assert await stack.service.default_model(in_channel) == "finetuned"
    assert await stack.service.default_model(elsewhere) == "demo"

    answer = await ask(stack, fake, command("model", user=MODERATOR, roles=(ADMIN_ROLE,), default="finetuned",
                                            scope="global"))
    assert answer["data"]["content"] == "finetuned is now the default model everywhere."
    assert await stack.service.default_model(elsewhere) == "finetuned"

    answer = await ask(stack, fake, command("model", user=ADMIN, default="missing"))
    assert answer["data"]["content"] == "There is no model 'missing'. Available: demo, finetuned."
    answer = await ask(stack, fake, command("model", user=ADMIN, reload=True))
    assert answer["data"]["content"].startswith("Models reloaded.")
    listing = await ask(stack, fake, command("model", user=ADMIN))
    assert listing["data"]["content"].splitlines()[-1] == (
        "Admins: /admin model sets the default model, /admin reload looks for new models.")

    choices = await ask(stack, fake, autocomplete("imagine", "model", "fine", prompt="a fox"))
    assert choices == {"type": 8, "data": {"choices": [{"name": "finetuned", "value": "finetuned"}]}}


async def test_commands_are_synced_with_vietnamese_texts_and_option_limits(make_stack, fake):
    await make_stack(discord={"test_guild": GUILD}, limits={"max_steps": 40})
    synced = fake.find("PUT", rf"/applications/\d+/guilds/{GUILD}/commands")[0].json
    commands = {c["name"]: c for c in synced}
    assert set(commands) == {"imagine", "describe", "Imagine from this image", "model", "admin", "queue", "cancel",
                             "settings", "history", "help"}
    imagine = commands["imagine"]
    assert imagine["description_localizations"]["vi"] == "Tạo ảnh từ một câu mô tả"
    options = {o["name"]: o for o in imagine["options"]}
    assert (options["steps"]["min_value"], options["steps"]["max_value"]) == (1, 40)
    assert options["model"]["autocomplete"] is True
    assert [c["value"] for c in options["scheduler"]["choices"]][:2] == ["dpm++", "dpm++_karras"]
    assert (options["refiner"]["type"], options["refiner"]["min_value"], options["refiner"]["max_value"]) == (10, 0, 0.99)


async def test_settings_queue_cancel_and_history(make_stack, fake):
    stack = await make_stack()
    saved = await ask(stack, fake, command("settings", flags="--steps 2 --seed 5"))
    assert saved["data"]["content"] == "Your defaults are now: --steps 2 --seed 5"
    refused = await ask(stack, fake, command("settings", flags="--n 2", scope="channel"))
    assert refused["data"]["content"] == "Only admins can do that."
    await ask(stack, fake, command("settings", flags="--n 2 --steps 4", scope="channel", user=ADMIN))
    for flags, expected in (("a cat --steps 2", "Give only options, e.g. --ar 3:2"),
                            ("--steps lots", "steps must be a whole number, got 'lots'.")):
        answer = await ask(stack, fake, command("settings", flags=flags))
        assert answer["data"]["content"].startswith(expected) and answer["data"]["flags"] & EPHEMERAL
    shown = await ask(stack, fake, command("settings"))
    assert shown["data"]["content"] == "Your defaults: --steps 2 --seed 5\nThis channel's defaults: --n 2 --steps 4"

    # Own defaults win over the channel's, and the channel's fill in the rest.
    await ask(stack, fake, command("imagine", prompt="a fox"))
    job = await stack.service.job(1)
    assert (job.request.steps, job.request.seed, job.request.count) == (2, 5, 2)
    bob_job_reply = await ask(stack, fake, command("imagine", prompt="a fox", user=BOB))
    assert "is queued" in bob_job_reply["data"]["content"]
    assert (await stack.service.job(2)).request.steps == 4

    first = short_id((await stack.wait_job(1)).public_id)  # chats name jobs by the start of their public id
    assert f"#{first} done: “a fox”" in (await ask(stack, fake, command("history")))["data"]["content"]
    cleared = await ask(stack, fake, command("settings", clear=True))
    assert cleared["data"]["content"] == "Your defaults are removed."

    waiting = await ask(stack, fake, command("imagine", prompt="a hare --steps 50"))
    third = short_id((await stack.service.job(3)).public_id)
    assert f"Job #{third} is queued" in waiting["data"]["content"]
    queue = (await ask(stack, fake, command("queue")))["data"]["content"]
    assert f"#{third}" in queue and "“a hare”" in queue
    cancelled = (await ask(stack, fake, command("cancel")))["data"]["content"]
    assert cancelled in (f"Job #{third} is cancelled.", f"Job #{third} stops at its next step.")
    assert (await stack.wait_job(3)).status == "cancelled"
    # Finished jobs are not among the caller's unfinished ones the short id is looked up in.
    assert (await ask(stack, fake, command("cancel", job=third)))["data"]["content"] == f"There is no job #{third}."
    assert (await ask(stack, fake, command("cancel", job="3")))["data"]["content"] == "There is no job #3."
    assert (await ask(stack, fake, command("queue")))["data"]["content"] == "You have no jobs waiting or running."
    help_text = (await ask(stack, fake, command("help", locale="vi")))["data"]["content"]
    assert help_text.startswith("**/imagine** `mô tả` để tạo ảnh.")


@pytest.mark.parametrize("test_guild", [GUILD, 0], ids=["test-guild", "global"])
async def test_only_admin_is_hidden_by_default_and_guild_only(make_stack, fake, test_guild):
    await make_stack(discord={"test_guild": test_guild})
    path = rf"/applications/\d+/guilds/{GUILD}/commands" if test_guild else r"/applications/\d+/commands"
    [sync] = fake.find("PUT", path)
    commands = {c["name"]: c for c in sync.json}
    assert set(commands) == {"imagine", "describe", "Imagine from this image", "model", "admin", "queue", "cancel",
                             "settings", "history", "help"}
    admin = commands.pop("admin")
    assert str(admin["default_member_permissions"]) == str(MANAGE_GUILD) == "32"
    assert admin["dm_permission"] is False and admin["contexts"] == [0]  # 0: in a server only
    for name, other in commands.items():
        assert other.get("default_member_permissions") is None, name

    subcommands = {o["name"]: o for o in admin["options"]}
    assert {name: o["type"] for name, o in subcommands.items()} == {"model": 1, "reload": 1, "ban": 1, "unban": 1}
    ban = {o["name"]: o for o in subcommands["ban"]["options"]}
    assert (ban["user"]["type"], ban["user"]["required"], ban["reason"]["required"]) == (6, True, True)
    options = {o["name"]: o for o in subcommands["model"]["options"]}
    assert options["name"]["required"] is True and options["name"]["autocomplete"] is True
    assert [c["value"] for c in options["scope"]["choices"]] == ["channel", "everywhere"]
    assert admin["description_localizations"]["vi"].startswith("Công cụ quản trị")


async def test_admin_subcommands_check_the_configured_admins(make_stack, fake, models_dir, tiny_pipeline_dir):
    add_pipeline_variant(models_dir, "finetuned", tiny_pipeline_dir, 'kind = "pipeline"\n')
    # No rescan on its own during the test: new models appear only through /admin reload.
    stack = await make_stack(models={"rescan_seconds": 3600.0})
    in_channel = Origin("discord", str(BOB), chat_id=str(CHANNEL))
    elsewhere = Origin("discord", str(BOB), chat_id=str(OTHER_CHANNEL))

    choices = await ask(stack, fake, subcommand_autocomplete("admin", "model", "name", "fine", user=BOB))
    assert choices == {"type": 8, "data": {"choices": [{"name": "finetuned", "value": "finetuned"}]}}
    add_pipeline_variant(models_dir, "fresh", tiny_pipeline_dir, 'kind = "pipeline"\n')

    # Discord delivers /admin to whoever the server's owner granted it to, Manage Server or not;
    # none of these members is a configured admin.
    for payload in (subcommand("admin", "model", user=BOB, name="finetuned"),
                    subcommand("admin", "model", user=BOB, name="finetuned", scope="everywhere"),
                    subcommand("admin", "model", user=BOB, roles=(ADMIN_ROLE + 1,), name="finetuned"),
                    subcommand("admin", "reload", user=BOB)):
        payload["member"]["permissions"] = str(int(payload["member"]["permissions"]) | MANAGE_GUILD)
        answer = await ask(stack, fake, payload)
        assert answer["data"]["content"] == "Only admins can do that." and answer["data"]["flags"] & EPHEMERAL
    assert await stack.service.default_model(in_channel) == "demo"
    assert await stack.service.default_model(elsewhere) == "demo"
    assert "fresh" not in {v["name"] for v in await stack.service.list_variants()}

    answer = await ask(stack, fake, subcommand("admin", "model", user=MODERATOR, roles=(ADMIN_ROLE,), name="finetuned"))
    assert answer["data"]["content"] == "finetuned is now the default model in this channel."
    assert answer["data"]["flags"] & EPHEMERAL
    assert await stack.service.default_model(in_channel) == "finetuned"
    assert await stack.service.default_model(elsewhere) == "demo"

    answer = await ask(stack, fake, subcommand("admin", "model", user=ADMIN, name="finetuned", scope="everywhere",
                                               locale="vi"))
    assert answer["data"]["content"] == render("dc_model_set_global", "vi", name="finetuned")
    assert await stack.service.default_model(elsewhere) == "finetuned"

    answer = await ask(stack, fake, subcommand("admin", "model", user=ADMIN, name="missing"))
    assert answer["data"]["content"].startswith("There is no model 'missing'.")

    answer = await ask(stack, fake, subcommand("admin", "reload", user=MODERATOR, roles=(ADMIN_ROLE,)))
    assert answer["data"]["content"] == "Models reloaded. Added: fresh. Changed: none. Removed: none."
    assert "fresh" in {v["name"] for v in await stack.service.list_variants()}


def _with_user(payload: dict, user: int) -> dict:
    """`payload` (an /admin subcommand) with a `user` option naming `user`, resolved as Discord sends it."""
    payload["data"]["options"][0]["options"].insert(0, {"name": "user", "type": 6, "value": str(user)})
    payload["data"]["resolved"] = {"users": {str(user): {"id": str(user), "username": f"user{user % 100}",
                                                         "discriminator": "0", "avatar": None, "global_name": None}}}
    return payload


async def test_admins_ban_and_unban_and_the_banned_user_is_told_why(make_stack, fake):
    stack = await make_stack()
    refused = await ask(stack, fake, _with_user(subcommand("admin", "ban", user=BOB, reason="spam"), ALICE))
    assert refused["data"]["content"] == "Only admins can do that." and refused["data"]["flags"] & EPHEMERAL

    banned = await ask(stack, fake, _with_user(subcommand("admin", "ban", user=ADMIN, reason="  spam  "), BOB))
    assert banned["data"]["content"] == f"<@{BOB}> is banned: spam" and banned["data"]["flags"] & EPHEMERAL
    told = await ask(stack, fake, command("imagine", prompt="a fox", user=BOB))
    assert told["data"]["content"] == "You cannot use this bot: spam" and told["data"]["flags"] & EPHEMERAL
    assert (await ask(stack, fake, _with_user(subcommand("admin", "unban", user=BOB), BOB)))["data"]["content"] == (
        "Only admins can do that.")

    unbanned = await ask(stack, fake, _with_user(subcommand("admin", "unban", user=ADMIN, locale="vi"), BOB))
    assert unbanned["data"]["content"] == f"<@{BOB}> đã được dùng bot trở lại."
    assert "is queued" in (await ask(stack, fake, command("imagine", prompt="a fox --steps 1", user=BOB)))["data"]["content"]

    admin = Origin("discord", str(ADMIN), is_admin=True)
    log = [(entry["actor"], entry["action"], entry["detail"]["user"]) for entry in await stack.service.audit_log(admin)]
    assert log == [(f"discord:{ADMIN}", "unban", f"discord:{BOB}"), (f"discord:{ADMIN}", "ban", f"discord:{BOB}")]
