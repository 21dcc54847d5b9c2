"""Who may not use the bot: bans of one user and bans of a network address.

A user is `platform:id` (`telegram:42`, `discord:42`, `web:<client key>`, `web:user:<account>`).
Web and API callers without accounts invent their client keys, so a ban of one key stops only
that key: `address:<IP>` bans everyone calling from that address, whatever key they send, and the
web keys already seen from it, so moving to another network does not lift it. Banning
`web:anon-<IP>` (a caller without a key) bans the address too: that caller *is* its address.
Behind a router (NAT) or a proxy that is not in `[web] trusted_proxies`, one address is many
people: an address ban locks them all out.

SQLite holds the bans; this class mirrors them in memory, so checking one on every request costs
no query. Admins are never refused.
"""

from __future__ import annotations

import ipaddress

from bot.core.errors import UserError, require_admin
from bot.core.jobs import Origin
from bot.core.store import Store

ADDRESS_PREFIX = "address:"
KEYLESS_PREFIX = "web:anon-"  # the user id of a web caller that sent no client key
REASON_CHARS = 300


class Bans:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.reasons: dict[str, str] = {}  # banned key -> the reason its user is shown

    async def load(self) -> None:
        self.reasons = await self.store.bans()

    def reason_for(self, origin: Origin) -> str | None:
        """Why `origin` may not use the bot (their own ban, else their address's), or None."""
        reason = self.reasons.get(origin.user_key)
        if reason is None and origin.address_key:
            reason = self.reasons.get(origin.address_key)
        return reason

    def check(self, origin: Origin) -> None:
        """Refuse (403, with the reason) a banned caller; admins pass."""
        if origin.is_admin:
            return
        reason = self.reason_for(origin)
        if reason is not None:
            raise UserError("banned", reason=reason)

    async def ban(self, key: str, reason: str, by: Origin) -> list[str]:
        """Ban `key` (a user, or `address:<IP>`); returns every key the ban covers. Admins only."""
        require_admin(by)
        reason = reason.strip()[:REASON_CHARS]
        if not reason:
            raise UserError("ban_needs_reason")
        address = address_of(key)
        covered = [key]
        if address is not None:
            covered += [ADDRESS_PREFIX + address, *await self.store.web_users_from(address)]
        covered = list(dict.fromkeys(covered))  # once each, the named key first
        for each in covered:
            # The keys an address ban brought along name it as their source, so lifting it lifts them.
            source = by.user_key if each == key else ADDRESS_PREFIX + address
            await self.store.ban(each, reason, source)
            self.reasons[each] = reason
        await self.store.audit(by.user_key, "ban", {"user": key, "reason": reason, "covers": covered[1:]})
        return covered

    async def unban(self, key: str, by: Origin) -> list[str]:
        """Lift the ban of `key`, and for an address the bans it brought along. Admins only."""
        require_admin(by)
        address = address_of(key)
        lifted = [key]
        if address is not None:
            lifted += [ADDRESS_PREFIX + address, KEYLESS_PREFIX + address,
                       *await self.store.bans_by(ADDRESS_PREFIX + address)]
        lifted = [each for each in dict.fromkeys(lifted) if each == key or each in self.reasons]
        for each in lifted:
            await self.store.unban(each)
            self.reasons.pop(each, None)
        await self.store.audit(by.user_key, "unban", {"user": key, "covers": lifted[1:]})
        return lifted


def address_of(key: str) -> str | None:
    """The network address a ban key stands for (`address:<IP>`, `web:anon-<IP>`), else None; a
    malformed address is refused with what is allowed."""
    for prefix in (ADDRESS_PREFIX, KEYLESS_PREFIX):
        if key.startswith(prefix):
            text = key[len(prefix):]
            try:
                return str(ipaddress.ip_address(text))
            except ValueError:
                raise UserError("ban_bad_address", address=text[:64]) from None
    return None
