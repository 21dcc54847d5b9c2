"""Password hashes: scrypt with a random salt per password, compared in constant time.

A stored hash reads `scrypt$N$r$p$salt$hash` (salt and hash in base64), so the cost can be raised
later without breaking the hashes already stored: each one carries the parameters it was made with.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets

# 2**14 x 8 x 1: 16 MiB and some 50 ms per hash on one core (the cost OWASP names for scrypt),
# which makes guessing offline slow and is still quick enough for a person signing in.
COST, BLOCK_SIZE, PARALLELISM = 2 ** 14, 8, 1
SALT_BYTES, HASH_BYTES = 16, 32
MIN_LENGTH, MAX_LENGTH = 8, 256  # characters; long ones are refused so one request cannot cost much


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, COST, BLOCK_SIZE, PARALLELISM)
    return "$".join(("scrypt", str(COST), str(BLOCK_SIZE), str(PARALLELISM), _b64(salt), _b64(digest)))


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` is the one `stored` was made from. A malformed hash matches nothing."""
    try:
        scheme, cost, block_size, parallelism, salt, digest = stored.split("$")
        if scheme != "scrypt" or len(password) > MAX_LENGTH:
            return False
        expected = base64.b64decode(digest)
        actual = _scrypt(password, base64.b64decode(salt), int(cost), int(block_size), int(parallelism))
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


@functools.cache
def dummy_hash() -> str:
    """A hash to check against when a name is unknown, so a wrong name takes as long as a wrong
    password and the time of an answer does not tell which names exist."""
    return hash_password(secrets.token_urlsafe(16))


def _scrypt(password: str, salt: bytes, cost: int, block_size: int, parallelism: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=cost, r=block_size, p=parallelism,
                          maxmem=2 * 128 * cost * block_size * parallelism, dklen=HASH_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
