"""Who a request comes from: the client's network address (believing X-Forwarded-For only from a
trusted proxy) and its client key (`X-Imagebot-User`).

The key is the caller's only identity: it keeps their job list and cancel rights apart from
other clients'. It must be long enough not to be guessed (16-64 of `[A-Za-z0-9_-]`); without one
the caller is known by address as `anon-<address>`, which no header can claim because a key
cannot contain '.' or ':'. Quotas also count per address, so rotating keys does not get past them.
"""

from __future__ import annotations

import ipaddress
import re

from starlette.requests import HTTPConnection

from bot.config import WebConfig
from bot.core.errors import UserError

CLIENT_KEY = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(web: WebConfig) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in web.trusted_proxies)


def client_address(connection: HTTPConnection, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or behind trusted proxies the rightmost X-Forwarded-For
    hop that is not itself a trusted proxy (hops to its left were written by the client and prove
    nothing)."""
    address = connection.client.host if connection.client else "unknown"
    if not trusted or not is_trusted(address, trusted):
        return address
    hops = [hop.strip() for hop in ",".join(connection.headers.getlist("x-forwarded-for")).split(",") if hop.strip()]
    for hop in reversed(hops):
        if not is_trusted(hop, trusted):
            return hop if _is_address(hop) else address
        address = hop
    return address


def client_key(connection: HTTPConnection, address: str, refuse_malformed: bool = True) -> str:
    """The caller's user id: their valid client key, else `anon-<address>`; a malformed key is
    refused (or, with `refuse_malformed` off, taken as no key)."""
    key = connection.headers.get("x-imagebot-user")
    if key is None or key == "":
        return f"anon-{address}"
    if not CLIENT_KEY.fullmatch(key):
        if refuse_malformed:
            raise UserError("bad_client_key")
        return f"anon-{address}"
    return key


def is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
