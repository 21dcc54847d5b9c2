"""How many uploaded images each client and each network address may keep waiting for a request.

An upload handle stays on disk until it expires (bot/core/uploads.py), whether or not a job used
it. Without a share per client, one stranger fills the pool and every other user is refused; a
client key costs nothing to invent, so each address has a share as well. Sizes are those of the
files as stored (a small noisy JPEG can grow fivefold as PNG), never as sent.

In memory: a restart forgets who holds what (uploads from before it still count in the total),
and every upload expires within the hour anyway.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from bot.config import Limits
from bot.core.errors import UserError

ADDRESS_PREFIX = "address:"  # owner keys that name a network address (Origin.address_key)


@dataclass(frozen=True)
class UploadQuotaLimits:
    per_user: int = 50  # uploads kept at once by one user (0 = no limit)
    per_user_bytes: int = 500 * 1024 * 1024  # ... and their size as stored
    per_address: int = 100  # uploads kept at once from one network address, whatever keys it sends
    per_address_bytes: int = 1024 * 1024 * 1024
    total: int = 500  # uploads kept at once in all
    total_bytes: int = 4 * 1024 * 1024 * 1024


def upload_quota_limits(limits: Limits) -> UploadQuotaLimits:
    """The shares `[limits]` sets."""
    mib = 1024 * 1024
    return UploadQuotaLimits(limits.max_uploads_per_user, limits.max_upload_mb_per_user * mib,
                             limits.max_uploads_per_address, limits.max_upload_mb_per_address * mib,
                             limits.max_uploads, limits.max_upload_mb * mib)


class UploadQuota:
    def __init__(self, limits: UploadQuotaLimits) -> None:
        self.limits = limits
        self.held: dict[str, tuple[tuple[str, ...], int]] = {}  # handle -> (its owners, its size)
        self.count: Counter[str] = Counter()  # per owner
        self.size: Counter[str] = Counter()  # per owner, bytes
        self.total_size = 0

    def check(self, owners: tuple[str, ...], size: int) -> None:
        """Refuse an upload of `size` bytes that would take `owners` (or everyone) past a limit."""
        limits = self.limits
        if len(self.held) >= limits.total or self.total_size + size > limits.total_bytes:
            raise UserError("uploads_full")
        for owner in owners:
            by_address = owner.startswith(ADDRESS_PREFIX)
            count_limit = limits.per_address if by_address else limits.per_user
            size_limit = limits.per_address_bytes if by_address else limits.per_user_bytes
            if (count_limit and self.count[owner] >= count_limit) or (size_limit and self.size[owner] + size > size_limit):
                raise UserError("address_uploads_full" if by_address else "user_uploads_full",
                                count=self.count[owner], size=_mib(self.size[owner]), limit=count_limit,
                                limit_size=_mib(size_limit))

    def add(self, handle: str, owners: tuple[str, ...], size: int) -> None:
        self.held[handle] = (owners, size)
        self.total_size += size
        for owner in owners:
            self.count[owner] += 1
            self.size[owner] += size

    def drop(self, handle: str) -> None:
        """The upload is gone (expired or removed): it no longer counts."""
        owners, size = self.held.pop(handle, ((), 0))
        self.total_size -= size
        for owner in owners:
            for counter, amount in ((self.count, 1), (self.size, size)):
                counter[owner] -= amount
                if counter[owner] <= 0:
                    del counter[owner]


def _mib(size: int) -> str:
    return f"{size / (1024 * 1024):.0f} MiB"
