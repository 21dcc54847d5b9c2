"""HTTP Basic auth, as AUTOMATIC1111's `--api-auth` takes it: tools that speak its API (Open WebUI,
SillyTavern, the webuiapi client) send a user name and password with every call instead of keeping
a session cookie. With `[web] auth = "password"` they are the accounts' names and passwords.

A password check costs a fraction of a second of CPU (scrypt), and such clients call often (a
progress poll every second), so credentials that matched are remembered for a while, under a keyed
hash that is never stored: a caller sending the same pair again costs one database read.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict

from starlette.requests import HTTPConnection

REMEMBER_SECONDS = 300.0
REMEMBERED = 1024  # pairs kept at most; the oldest goes first


def basic_credentials(connection: HTTPConnection) -> tuple[str, str] | None:
    """(name, password) from `Authorization: Basic ...`; None without them. An empty pair (what
    clients send when their auth setting is blank) counts as none."""
    header = connection.headers.get("authorization", "")
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    name, colon, password = text.partition(":")
    return (name, password) if colon and (name or password) else None


class VerifiedCredentials:
    """Name and password pairs that matched an account lately: pair -> (account name, its creation
    time, so an account removed and made again under the same name needs its new password)."""

    def __init__(self, seconds: float = REMEMBER_SECONDS, size: int = REMEMBERED) -> None:
        self.seconds = seconds
        self.size = size
        self._key = secrets.token_bytes(32)  # this process's own: the digests mean nothing elsewhere
        self._seen: OrderedDict[bytes, tuple[str, float, float]] = OrderedDict()

    def _digest(self, name: str, password: str) -> bytes:
        return hmac.new(self._key, f"{name}\0{password}".encode("utf-8"), hashlib.sha256).digest()

    def known(self, name: str, password: str) -> tuple[str, float] | None:
        """(account name, created_at) of a pair that matched within the last `seconds`."""
        digest = self._digest(name, password)
        seen = self._seen.get(digest)
        if seen is None:
            return None
        account, created_at, until = seen
        if until <= time.monotonic():
            del self._seen[digest]
            return None
        return account, created_at

    def remember(self, name: str, password: str, account: str, created_at: float) -> None:
        self._seen[self._digest(name, password)] = (account, created_at, time.monotonic() + self.seconds)
        while len(self._seen) > self.size:
            self._seen.popitem(last=False)
