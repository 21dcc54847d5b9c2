"""The crawler's HTTP client: every request `imagebot data crawl` sends goes through `Fetcher`.

How it behaves towards the sites it visits:

- Every request names the project in its User-Agent (`USER_AGENT`); robots.txt is read once per
  host (RFC 9309: a missing robots.txt allows everything, an unreachable one allows nothing) and a
  disallowed URL is skipped with a log line. A robots.txt `Crawl-delay` lengthens `--delay`.
- At most one request per `--delay` seconds per host; timeouts on every read and one overall
  `--deadline` per request (a server dripping a byte at a time cannot hold a crawl); 5xx answers and
  network errors are retried with exponential back-off; a 429 waits for its `Retry-After`.
- Result links and redirects never reach this machine's own network: a host that resolves to a
  loopback, private, link-local, multicast or otherwise non-public address is refused, checked on
  the address actually connected to (so a DNS answer cannot change in between). The search
  provider's own address, which the user gives, is trusted; `--allow-private-addresses` lifts the
  rule for a crawl of a LAN.
- Downloads stop at `--max-bytes` (what an image must be besides is checked by training.crawl).

The crawl's error types live here, in its lowest layer, so that every part raises the same ones.
"""

from __future__ import annotations

import email.utils
import functools
import http.client
import ipaddress
import logging
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.robotparser
from dataclasses import dataclass
from datetime import datetime, timezone
from email.message import Message
from typing import Any, Callable

log = logging.getLogger(__name__)

USER_AGENT = "ImageChatbot-crawler/0.1 (imagebot data crawl; self-hosted dataset tool)"
REDIRECT_CODES = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
PAGE_MAX_BYTES = 8 * 1024 * 1024


class CrawlError(ValueError):
    """Bad crawl settings; the message says what is allowed."""


class FetchError(Exception):
    """A URL could not be fetched. `permanent` failures are remembered; the others are retried on
    the next run (a site that was down may be back)."""

    def __init__(self, message: str, permanent: bool = True):
        super().__init__(message)
        self.permanent = permanent


class PrivateAddress(OSError):
    """A host that resolves to an address of this machine's own network."""


class Refused(FetchError):
    """The URL leads into this machine's own network (see AddressGuard)."""


class Disallowed(FetchError):
    """robots.txt does not let this crawler fetch the URL."""


@dataclass
class Response:
    url: str
    status: int
    headers: Message
    body: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get_content_type() if self.headers.get("Content-Type") else ""

    def text(self) -> str:
        return self.body.decode(self.headers.get_content_charset() or "utf-8", errors="replace")


class RateLimiter:
    """Spaces requests to one host at least `min_interval` seconds apart.

    The clock and sleep are injectable so tests check the computed waits without waiting."""

    def __init__(self, min_interval: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.min_interval = min_interval
        self.clock = clock
        self.sleep = sleep
        self._next_allowed: dict[str, float] = {}

    def wait(self, host: str, min_interval: float | None = None) -> float:
        """Sleeps until `host` may be asked again and returns the seconds slept."""
        interval = max(self.min_interval, min_interval or 0.0)
        now = self.clock()
        pause = max(0.0, self._next_allowed.get(host, now) - now)
        if pause > 0:
            self.sleep(pause)
        # From the intended start, not the clock after sleeping: a fake sleep does not move the clock.
        self._next_allowed[host] = now + pause + interval
        return pause


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by Fetcher itself, so every hop is checked against robots.txt."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


class AddressGuard:
    """Opens the TCP connections of every request: to public addresses only (unless told
    otherwise), to the very address it checked, and cut at the request's deadline."""

    def __init__(self, allow_private: bool = False, trusted: set[str] | None = None) -> None:
        self.allow_private = allow_private
        self.trusted = trusted if trusted is not None else set()  # "host:port" the user named
        self.deadline: float | None = None  # time.monotonic() by which the current request ends
        self._timers: list[threading.Timer] = []

    def connect(self, host: str, port: int, timeout: float | None, source_address: Any = None) -> socket.socket:
        if self.allow_private or f"{host}:{port}" in self.trusted:
            sock = socket.create_connection((host, port), timeout, source_address)
        else:
            sock = self._connect_public(host, port, timeout, source_address)
        self._cut_at_deadline(sock)
        return sock

    def _connect_public(self, host: str, port: int, timeout: float | None, source_address: Any) -> socket.socket:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for *_, sockaddr in addresses:
            address = ipaddress.ip_address(sockaddr[0].split("%")[0])
            if not address.is_global or address.is_multicast:
                raise PrivateAddress(f"{host} resolves to {address}, an address of a private network")
        last: OSError | None = None
        for family, kind, proto, _, sockaddr in addresses:  # connect to what was checked, not a new lookup
            sock = socket.socket(family, kind, proto)
            try:
                sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as error:
                sock.close()
                last = error
        raise last or OSError(f"cannot connect to {host}")

    def _cut_at_deadline(self, sock: socket.socket) -> None:
        if self.deadline is None:
            return
        timer = threading.Timer(max(0.0, self.deadline - time.monotonic()), _shut, (sock,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def request_done(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self.deadline = None


def _shut(sock: socket.socket) -> None:
    """Past the deadline: a read blocked on this socket returns at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _GuardedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, timeout, source=None: guard.connect(*address, timeout, source)


class _GuardedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, guard: AddressGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, timeout, source=None: guard.connect(*address, timeout, source)


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.guard = guard

    def http_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_GuardedHTTPConnection, guard=self.guard), req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: AddressGuard) -> None:
        super().__init__()
        self.guard = guard

    def https_open(self, req: urllib.request.Request) -> Any:
        return self.do_open(functools.partial(_GuardedHTTPSConnection, guard=self.guard), req,
                            context=self._context)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.lower()


def normalise_url(url: str) -> str:
    """Search results hold URLs with spaces and non-ASCII letters, which an HTTP request line
    cannot carry: percent-encode them (existing escapes stay) and IDNA-encode the host."""
    parts = urllib.parse.urlsplit(url.strip())
    try:
        host = parts.hostname.encode("idna").decode("ascii") if parts.hostname else ""
    except UnicodeError:
        return url  # refused by the scheme/host checks of Fetcher.get
    netloc = host + (f":{parts.port}" if parts.port else "") if host != parts.hostname else parts.netloc
    safe = "/:@!$&'()*+,;=%~"
    return urllib.parse.urlunsplit((parts.scheme, netloc, urllib.parse.quote(parts.path, safe=safe),
                                    urllib.parse.quote(parts.query, safe=safe + "?"), ""))


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class Fetcher:
    """GET with the project's User-Agent, robots.txt, a per-host rate limit, timeouts, a size
    limit, retries with back-off on 5xx/network errors, and Retry-After on 429."""

    def __init__(self, *, user_agent: str = USER_AGENT, delay: float = 1.0, timeout: float = 20.0,
                 deadline: float = 120.0, retries: int = 3, backoff: float = 2.0, max_retry_after: float = 120.0,
                 allow_private_addresses: bool = False,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep):
        self.user_agent = user_agent
        self.timeout = timeout  # seconds one read (or the connect) may wait
        self.deadline = deadline  # seconds one request may take in all
        self.retries = retries
        self.backoff = backoff
        self.max_retry_after = max_retry_after
        self.sleep = sleep
        self.limiter = RateLimiter(delay, clock, sleep)
        self._robots: dict[str, urllib.robotparser.RobotFileParser] = {}
        self.guard = AddressGuard(allow_private_addresses)
        self._opener = urllib.request.build_opener(_NoRedirect(), _GuardedHTTPHandler(self.guard),
                                                   _GuardedHTTPSHandler(self.guard))
        self.requests = 0  # every request sent, robots.txt included

    def trust(self, url: str) -> None:
        """Let requests reach this URL's host and port whatever its address (a provider the user
        named, e.g. a SearXNG instance on the LAN)."""
        parts = urllib.parse.urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        self.guard.trusted.add(f"{parts.hostname}:{port}")

    def get(self, url: str, max_bytes: int = PAGE_MAX_BYTES) -> Response:
        """Follows up to MAX_REDIRECTS redirects; raises Disallowed or FetchError."""
        url = normalise_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                raise FetchError(f"not an http(s) URL: {url}")
            if not self.allowed(url):
                raise Disallowed(f"disallowed by robots.txt: {url}")
            response = self._get_with_retries(url, max_bytes)
            if response.status not in REDIRECT_CODES:
                return response
            location = response.headers.get("Location")
            if not location:
                raise FetchError(f"HTTP {response.status} without a Location header: {url}")
            url = normalise_url(urllib.parse.urljoin(url, location))
        raise FetchError(f"more than {MAX_REDIRECTS} redirects: {url}")

    # robots.txt ---------------------------------------------------------------------------

    def allowed(self, url: str) -> bool:
        parts = urllib.parse.urlsplit(url)
        root = f"{parts.scheme}://{parts.netloc}"
        if root not in self._robots:
            self._robots[root] = self._read_robots(root)
        return self._robots[root].can_fetch(self.user_agent, url)

    def _read_robots(self, root: str) -> urllib.robotparser.RobotFileParser:
        parser = urllib.robotparser.RobotFileParser(root + "/robots.txt")
        url = root + "/robots.txt"
        try:
            for _ in range(MAX_REDIRECTS + 1):
                response = self._get_with_retries(url, 512 * 1024)
                if response.status not in REDIRECT_CODES or not response.headers.get("Location"):
                    break
                url = urllib.parse.urljoin(url, response.headers["Location"])
        except Refused:
            raise  # not a robots.txt question: the whole host is out of bounds
        except FetchError as exc:
            if getattr(exc, "status", 0) and 400 <= exc.status < 500:  # type: ignore[attr-defined]
                parser.allow_all = True  # RFC 9309 2.3.1.3: no robots.txt, no restrictions
            else:
                log.warning("robots.txt of %s unreachable (%s): not crawling that host", root, exc)
                parser.disallow_all = True  # RFC 9309 2.3.1.4: unreachable means complete disallow
            return parser
        parser.parse(response.text().splitlines())
        parser.modified()  # can_fetch() refuses everything until a read time is recorded
        return parser

    def crawl_delay(self, url: str) -> float:
        parts = urllib.parse.urlsplit(url)
        parser = self._robots.get(f"{parts.scheme}://{parts.netloc}")
        delay = parser.crawl_delay(self.user_agent) if parser and parser.last_checked else None
        return float(delay or 0.0)

    # one URL, with retries -------------------------------------------------------------------

    def _get_with_retries(self, url: str, max_bytes: int) -> Response:
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * 2 ** attempt
            self.limiter.wait(_host(url), self.crawl_delay(url))
            self.requests += 1
            request = urllib.request.Request(url, headers={"User-Agent": self.user_agent,
                                                           "Accept": "*/*"})
            self.guard.deadline = time.monotonic() + self.deadline
            try:
                with self._opener.open(request, timeout=self.timeout) as raw:
                    return Response(url, raw.status, raw.headers, _read_limited(raw, url, max_bytes, self.guard))
            except urllib.error.HTTPError as exc:
                exc.close()
                if exc.code in REDIRECT_CODES:
                    return Response(url, exc.code, exc.headers, b"")
                last = f"HTTP {exc.code}"
                if exc.code == 429:
                    asked = parse_retry_after(exc.headers.get("Retry-After"))
                    if asked is not None and asked > self.max_retry_after:
                        raise FetchError(f"HTTP 429, Retry-After {asked:.0f} s is over the "
                                         f"{self.max_retry_after:.0f} s limit: {url}", permanent=False)
                    wait = asked if asked is not None else wait
                elif exc.code < 500:
                    error = FetchError(f"HTTP {exc.code}: {url}")
                    error.status = exc.code  # type: ignore[attr-defined]
                    raise error from None
            except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
                if isinstance(getattr(exc, "reason", None), PrivateAddress):
                    raise Refused(f"refused {url}: {exc.reason} (--allow-private-addresses to crawl "
                                  "a LAN)") from None
                last = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
                if self.guard.deadline is not None and time.monotonic() >= self.guard.deadline:
                    last = f"no complete answer within the {self.deadline:g} s deadline"
            except ValueError as exc:  # a URL http.client refuses (bad port, control characters)
                raise FetchError(f"unusable URL {url}: {exc}") from None
            finally:
                self.guard.request_done()
            if attempt < self.retries:
                log.info("%s for %s; retrying in %.1f s", last, url, wait)
                self.sleep(wait)
        raise FetchError(f"{last} after {self.retries + 1} attempts: {url}", permanent=False)


def _read_limited(raw: Any, url: str, max_bytes: int, guard: AddressGuard) -> bytes:
    length = raw.headers.get("Content-Length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise FetchError(f"{url} is {int(length)} bytes, over the {max_bytes} byte limit")
    chunks, total = [], 0
    while chunk := raw.read1(64 * 1024):  # what has arrived: the deadline is checked between reads
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:  # a missing or false Content-Length
            raise FetchError(f"{url} is over the {max_bytes} byte limit")
        if guard.deadline is not None and time.monotonic() >= guard.deadline:
            break
    # At the deadline the guard shuts the socket, so the body ends early: never keep half an answer.
    if guard.deadline is not None and time.monotonic() >= guard.deadline:
        raise OSError("the deadline passed while the body was read")
    if length and length.isdigit() and total < int(length):
        raise OSError(f"the answer ended after {total} of {length} bytes")
    return b"".join(chunks)
