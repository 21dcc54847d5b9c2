"""Bans of users and of addresses, kept in SQLite and checked from memory: what each covers, that
they survive a restart, and that lifting an address ban lifts what it brought along."""

from __future__ import annotations

import pytest

from bot.core.bans import Bans
from bot.core.errors import UserError
from bot.core.jobs import Origin
from bot.core.request import GenerationRequest
from bot.core.store import Store

ADMIN = Origin("web", "root-0123456789abcdef", is_admin=True, address="127.0.0.1")
THERE = "203.0.113.7"


def at(user_id: str, address: str = THERE, platform: str = "web") -> Origin:
    return Origin(platform, user_id, address=address if platform == "web" else "")


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "jobs.sqlite3")
    yield store
    await store.close()


async def seen(store: Store, origin: Origin) -> None:
    """A job of `origin` in the store: its key has been seen from its address."""
    request = GenerationRequest(prompt="a cat", negative_prompt="", model="demo", seed=1, steps=3, guidance=7.0,
                                width=64, height=64, count=1)
    await store.add_job(request, origin)


async def test_an_address_ban_covers_every_key_from_it_and_the_keys_seen_there(store):
    await seen(store, at("first-key-0123456789"))
    await seen(store, at("user:carol"))  # an account: banned by name, not swept up with an address
    await seen(store, at("elsewhere-0123456789", "198.51.100.1"))
    bans = Bans(store)
    await bans.load()
    covered = await bans.ban(f"address:{THERE}", "flooding", ADMIN)
    assert covered == [f"address:{THERE}", "web:first-key-0123456789"]
    for banned in (at("a-new-key-0123456789"), at("anon-" + THERE), at("first-key-0123456789", "192.0.2.9")):
        with pytest.raises(UserError) as refused:
            bans.check(banned)
        assert refused.value.key == "banned" and refused.value.params["reason"] == "flooding"
    assert bans.reason_for(at("elsewhere-0123456789", "198.51.100.1")) is None
    assert bans.reason_for(at("42", platform="telegram")) is None
    bans.check(Origin("web", "root-0123456789abcdef", is_admin=True, address=THERE))  # admins pass

    restarted = Bans(store)
    await restarted.load()
    assert restarted.reason_for(at("yet-another-key-0123")) == "flooding"

    lifted = await restarted.unban(f"address:{THERE}", ADMIN)
    assert sorted(lifted) == [f"address:{THERE}", "web:first-key-0123456789"]
    assert restarted.reason_for(at("first-key-0123456789", "192.0.2.9")) is None
    assert await store.bans() == {}


async def test_banning_a_keyless_caller_bans_its_address(store):
    bans = Bans(store)
    covered = await bans.ban(f"web:anon-{THERE}", "spam", ADMIN)
    assert covered == [f"web:anon-{THERE}", f"address:{THERE}"]
    assert bans.reason_for(at("fresh-key-0123456789")) == "spam"  # a key sent from there does not help
    await bans.unban(f"web:anon-{THERE}", ADMIN)
    assert bans.reason_for(at("fresh-key-0123456789")) is None and await store.bans() == {}


async def test_a_malformed_address_and_a_non_admin_are_refused(store):
    bans = Bans(store)
    with pytest.raises(UserError) as bad:
        await bans.ban("address:not-an-address", "spam", ADMIN)
    assert bad.value.key == "ban_bad_address"
    with pytest.raises(UserError) as not_admin:
        await bans.ban(f"address:{THERE}", "spam", at("someone-0123456789ab"))
    assert not_admin.value.key == "not_admin"
    assert await store.bans() == {}
