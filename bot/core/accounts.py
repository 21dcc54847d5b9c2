"""Password accounts for the web page and API (`[web] auth = "password"`): users and their sessions.

A signed-in user is the identity of their jobs on every device (`web:user:<name>`), and an admin
account may do what the admin token allows. Passwords are kept only as scrypt hashes
(bot/core/passwords.py); a session is a random token the browser keeps in a cookie, of which only a
SHA-256 hash is stored, so a copy of the database lets no one in.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from bot.core.errors import UserError
from bot.core.passwords import MAX_LENGTH, MIN_LENGTH, dummy_hash, hash_password, verify_password
from bot.core.store import Store, storage_errors

USER_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,31}$")
USER_ID_PREFIX = "user:"  # before the name in a job's user id; a client key cannot contain ':'


@dataclass(frozen=True)
class Account:
    name: str
    is_admin: bool
    created_at: float

    @property
    def user_id(self) -> str:
        """The web user id of this account's jobs."""
        return USER_ID_PREFIX + self.name


@dataclass(frozen=True)
class Session:
    account: Account
    token: str  # for the cookie; only its hash is stored
    expires_at: float


def check_user_name(name: str) -> str:
    """The name as stored (lowercase), or a UserError saying what a name may be."""
    normal = name.strip().lower()
    if not USER_NAME.fullmatch(normal):
        raise UserError("bad_user_name", got=name[:40])
    return normal


def check_password(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise UserError("password_too_short", min=MIN_LENGTH)
    if len(password) > MAX_LENGTH:
        raise UserError("password_too_long", max=MAX_LENGTH)


class Accounts:
    """Users and sessions in the job store's database (migration 4)."""

    def __init__(self, store: Store, session_seconds: float) -> None:
        self.store = store
        self.session_seconds = session_seconds

    # --- users (the `imagebot users` command) ------------------------------------------------------

    async def add(self, name: str, password: str, is_admin: bool = False) -> Account:
        name = check_user_name(name)
        check_password(password)
        hashed = await asyncio.to_thread(hash_password, password)  # a fraction of a second of CPU
        account = Account(name, is_admin, time.time())
        with storage_errors():
            async with self.store.transaction():
                if await self._row(name) is not None:
                    raise UserError("user_exists", name=name)
                await self.store.db.execute(
                    "INSERT INTO users (name, password_hash, is_admin, created_at) VALUES (?, ?, ?, ?)",
                    (name, hashed, int(is_admin), account.created_at))
        return account

    async def remove(self, name: str) -> None:
        """Delete the user and end their sessions (their jobs stay, as anyone's do)."""
        normal = name.strip().lower()
        with storage_errors():
            async with self.store.exclusive():
                cursor = await self.store.db.execute("DELETE FROM users WHERE name = ?", (normal,))
        if cursor.rowcount == 0:
            raise UserError("no_such_user", name=name[:40])

    async def list(self) -> list[Account]:
        async with self.store.exclusive(), \
                self.store.db.execute("SELECT name, is_admin, created_at FROM users ORDER BY name") as cursor:
            return [_account(row) for row in await cursor.fetchall()]

    # --- sessions (the web page and API) -----------------------------------------------------------

    async def verify(self, name: str, password: str) -> Account | None:
        """The account of the right name and password, else None, without starting a session (API
        clients that send both with every call, as HTTP Basic auth). Wrong names cost as much time
        as wrong passwords."""
        row = await self._named(name)
        stored = row["password_hash"] if row is not None else dummy_hash()
        matches = await asyncio.to_thread(verify_password, password, stored)
        return _account(row) if row is not None and matches else None

    async def get(self, name: str) -> Account | None:
        """The account called `name`, as it is now (None once removed)."""
        row = await self._named(name)
        return _account(row) if row is not None else None

    async def sign_in(self, name: str, password: str) -> Session | None:
        """A new session for the right name and password, else None."""
        account = await self.verify(name, password)
        if account is None:
            return None
        normal = account.name
        token = secrets.token_urlsafe(32)
        now = time.time()
        expires_at = now + self.session_seconds
        with storage_errors():
            async with self.store.transaction():
                await self.store.db.execute("DELETE FROM sessions WHERE expires_at <= ?", (now,))
                await self.store.db.execute(
                    "INSERT INTO sessions (token_hash, user_name, created_at, expires_at) VALUES (?, ?, ?, ?)",
                    (_token_hash(token), normal, now, expires_at))
        return Session(account, token, expires_at)

    async def account_of(self, token: str) -> Account | None:
        """The account a session token belongs to, while the session lasts."""
        if not token or len(token) > 100:
            return None
        async with self.store.exclusive(), self.store.db.execute(
                "SELECT users.name, users.is_admin, users.created_at FROM sessions JOIN users "
                "ON users.name = sessions.user_name WHERE sessions.token_hash = ? AND sessions.expires_at > ?",
                (_token_hash(token), time.time())) as cursor:
            row = await cursor.fetchone()
        return _account(row) if row is not None else None

    async def sign_out(self, token: str) -> None:
        with storage_errors():
            async with self.store.exclusive():
                await self.store.db.execute("DELETE FROM sessions WHERE token_hash = ?", (_token_hash(token),))

    async def _named(self, name: str):
        """The row of the user `name` as typed (any case, spaces around), if it is a name at all."""
        normal = name.strip().lower()
        return await self._row(normal) if USER_NAME.fullmatch(normal) else None

    async def _row(self, name: str):
        async with self.store.exclusive(), self.store.db.execute(
                "SELECT name, password_hash, is_admin, created_at FROM users WHERE name = ?", (name,)) as cursor:
            return await cursor.fetchone()


def _token_hash(token: str) -> str:
    # The token is 256 random bits, so a plain hash is enough: there is nothing to guess.
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _account(row) -> Account:
    return Account(row["name"], bool(row["is_admin"]), row["created_at"])
