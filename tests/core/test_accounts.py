"""Password accounts: scrypt hashes, users and sessions in the real SQLite store."""

import sqlite3
import time

import pytest

from bot.core.accounts import Accounts
from bot.core.errors import UserError
from bot.core.passwords import hash_password, verify_password
from bot.core.store import Store

PASSWORD = "correct horse battery"


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "jobs.sqlite3")
    yield store
    await store.close()


@pytest.fixture
def accounts(store):
    return Accounts(store, session_seconds=3600)


def test_a_hash_is_salted_scrypt_and_checks_only_its_password():
    first, second = hash_password(PASSWORD), hash_password(PASSWORD)
    assert first.startswith("scrypt$16384$8$1$") and PASSWORD not in first
    assert first != second  # a salt of its own: equal passwords do not show as equal hashes
    assert verify_password(PASSWORD, first) and verify_password(PASSWORD, second)
    assert not verify_password(PASSWORD + "!", first)
    assert not verify_password(PASSWORD, "plain-text") and not verify_password(PASSWORD, "scrypt$1$2$3$!!$!!")


async def test_users_are_added_listed_and_removed_with_only_a_hash_stored(accounts, store, tmp_path):
    await accounts.add("Alice", PASSWORD, is_admin=True)
    await accounts.add("bob", PASSWORD)
    assert [(a.name, a.is_admin) for a in await accounts.list()] == [("alice", True), ("bob", False)]
    with sqlite3.connect(tmp_path / "jobs.sqlite3") as db:
        stored = dict(db.execute("SELECT name, password_hash FROM users"))
    assert PASSWORD not in "".join(stored.values()) and verify_password(PASSWORD, stored["alice"])
    await accounts.remove("ALICE")
    assert [a.name for a in await accounts.list()] == ["bob"]


@pytest.mark.parametrize(("name", "password", "key"), [
    ("", PASSWORD, "bad_user_name"), ("a b", PASSWORD, "bad_user_name"), ("x" * 33, PASSWORD, "bad_user_name"),
    ("../root", PASSWORD, "bad_user_name"), ("carol", "short", "password_too_short"),
    ("carol", "p" * 257, "password_too_long"),
])
async def test_bad_names_and_passwords_are_refused_saying_what_is_allowed(accounts, name, password, key):
    with pytest.raises(UserError) as refused:
        await accounts.add(name, password)
    assert refused.value.key == key
    assert await accounts.list() == []


async def test_a_name_is_taken_once_and_removing_a_stranger_says_so(accounts):
    await accounts.add("alice", PASSWORD)
    with pytest.raises(UserError, match="already a user 'alice'"):
        await accounts.add("ALICE", "another password")
    with pytest.raises(UserError, match="no user 'nobody'"):
        await accounts.remove("nobody")


async def test_a_session_names_its_account_until_it_ends(accounts, store):
    await accounts.add("alice", PASSWORD, is_admin=True)
    assert await accounts.sign_in("alice", "wrong password") is None
    assert await accounts.sign_in("nobody", PASSWORD) is None
    session = await accounts.sign_in(" Alice ", PASSWORD)
    assert session is not None and len(session.token) >= 40
    account = await accounts.account_of(session.token)
    assert (account.name, account.is_admin, account.user_id) == ("alice", True, "user:alice")
    async with store.db.execute("SELECT token_hash FROM sessions") as cursor:
        [(stored,)] = await cursor.fetchall()
    assert stored != session.token and session.token not in stored  # only a hash of the token is kept
    assert await accounts.account_of(session.token[:-1] + "x") is None
    await accounts.sign_out(session.token)
    assert await accounts.account_of(session.token) is None


async def test_sessions_expire_and_end_with_their_user(store):
    short = Accounts(store, session_seconds=0.05)
    await short.add("alice", PASSWORD)
    expired = await short.sign_in("alice", PASSWORD)
    time.sleep(0.1)
    assert await short.account_of(expired.token) is None
    accounts = Accounts(store, session_seconds=3600)
    session = await accounts.sign_in("alice", PASSWORD)
    async with store.db.execute("SELECT COUNT(*) FROM sessions") as cursor:
        assert (await cursor.fetchone())[0] == 1  # signing in cleared the expired one
    await accounts.remove("alice")
    assert await accounts.account_of(session.token) is None
    async with store.db.execute("SELECT COUNT(*) FROM sessions") as cursor:
        assert (await cursor.fetchone())[0] == 0
