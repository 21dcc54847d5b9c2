"""Crawl images by search query into the reference project's folder layout, with a manifest.

    imagebot data crawl "Vietnam ao dai" "Vietnam food" -o data/vietnam --per-query 200
    imagebot data crawl --queries-file data/prompts/vietnam-categories.txt -o data/vietnam

Output folder:

    <out>/<query>/Image_<k>_<n>.<ext>   k = the query's number, n = the image's number in it
    <out>/manifest.json                 [{"link", "caption", "category", "source"}], links relative
    <out>/.crawl-state.json             what was seen, so a rerun continues where it stopped

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
- Downloads stop at `--max-bytes`; an image must have an image (or unnamed) content type and decode
  completely with Pillow, as JPEG, PNG or WebP, at least `--min-size` pixels a side.

Duplicates are dropped by URL, by exact content (SHA-256) and by a perceptual hash
(training.manifest.phash, 64 bits) for re-encoded or resized copies. The state file records every URL with its outcome,
so a rerun never fetches an image URL twice (network failures excepted: they are tried again).

Search providers are small classes (`Provider`) registered in `PROVIDERS`: `bing` (Bing's image
search result page, the reference project's source) and `searxng` (the JSON API of a SearXNG
instance, e.g. a self-hosted one). Users must respect each site's terms and the images' licences.
"""

from __future__ import annotations

import argparse
import email.utils
import hashlib
import functools
import html.parser
import http.client
import io
import ipaddress
import json
import logging
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import urllib.robotparser
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import Message
from pathlib import Path
from typing import Any, Callable, Protocol

from PIL import Image

from bot.files.atomic import write_atomic
from training.manifest import (
    DEFAULT_DUP_DISTANCE,
    ManifestError,
    Record,
    check_template,
    phash,
    read_manifest,
    write_manifest,
)

log = logging.getLogger(__name__)

USER_AGENT = "ImageChatbot-crawler/0.1 (imagebot data crawl; self-hosted dataset tool)"
STATE_FILE = ".crawl-state.json"
MANIFEST_FILE = "manifest.json"
DEFAULT_CAPTION_TEMPLATE = "a photo of {query}"
CAPTION_FIELDS = ("query", "category")

# Pillow format -> file extension; anything else is rejected. The same set training.manifest
# lists from folders (GIF is mostly animations, BMP rare: neither is worth a re-encode).
IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
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


# ---------------------------------------------------------------------------------------------
# HTTP: rate limit, robots.txt, retries
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Search providers
# ---------------------------------------------------------------------------------------------


@dataclass
class ResultPage:
    image_urls: list[str]
    next_page: str | None  # None: no more results


class Provider(Protocol):
    """A search engine: one page of image URLs for a query. `page` is None for the first page,
    then whatever the previous page returned as `next_page`."""

    def search(self, query: str, page: str | None) -> ResultPage: ...


class _MAttributes(html.parser.HTMLParser):
    """Collects the `m` attributes (HTML-unescaped) of every tag."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.values.extend(value for name, value in attrs if name == "m" and value)


def parse_bing_page(page_html: str) -> tuple[list[str], int]:
    """(image URLs, number of results) of a Bing image result page: every result's `m` attribute
    holds JSON whose `murl` is the full-size image."""
    parser = _MAttributes()
    parser.feed(page_html)
    urls = []
    for value in parser.values:
        try:
            data = json.loads(value)
        except ValueError:
            continue
        if isinstance(data, dict) and isinstance(data.get("murl"), str):
            urls.append(data["murl"])
    return urls, len(parser.values)


class BingProvider:
    """Bing image search, the reference project's source. Pages through results with `first=`
    (the 1-based number of the first result)."""

    default_base_url = "https://www.bing.com/images/async"
    page_size = 35

    def __init__(self, fetcher: Fetcher, base_url: str | None = None):
        self.fetcher = fetcher
        self.base_url = base_url or self.default_base_url
        fetcher.trust(self.base_url)  # the search service itself; its result links are checked

    def search(self, query: str, page: str | None) -> ResultPage:
        first = int(page or 1)
        url = f"{self.base_url}?{urllib.parse.urlencode({'q': query, 'first': first, 'count': self.page_size})}"
        response = self.fetcher.get(url)
        urls, results = parse_bing_page(response.text())
        return ResultPage([urllib.parse.urljoin(response.url, u) for u in urls],
                          str(first + results) if results else None)


class SearxngProvider:
    """The JSON API of a SearXNG instance (`/search?format=json&categories=images`): a meta search
    engine one can host oneself. The instance must allow the json format (settings.yml,
    `search: formats: [html, json]`)."""

    def __init__(self, fetcher: Fetcher, base_url: str | None = None):
        if not base_url:
            raise CrawlError("--provider searxng needs --base-url, the address of a SearXNG "
                             "instance (e.g. http://localhost:8888)")
        self.fetcher = fetcher
        self.base_url = base_url.rstrip("/")
        fetcher.trust(self.base_url)  # often a self-hosted instance on the LAN; its result links are checked

    def search(self, query: str, page: str | None) -> ResultPage:
        number = int(page or 1)
        params = {"q": query, "categories": "images", "format": "json", "pageno": number}
        response = self.fetcher.get(f"{self.base_url}/search?{urllib.parse.urlencode(params)}")
        try:
            results = json.loads(response.text()).get("results", [])
        except (ValueError, AttributeError):
            raise FetchError(f"{response.url} did not answer with SearXNG JSON") from None
        urls = [urllib.parse.urljoin(response.url, r["img_src"]) for r in results
                if isinstance(r, dict) and isinstance(r.get("img_src"), str) and r["img_src"]]
        return ResultPage(urls, str(number + 1) if results else None)


# name -> factory(fetcher, base_url); add a provider by adding an entry.
PROVIDERS: dict[str, Callable[[Fetcher, str | None], Provider]] = {
    "bing": BingProvider,
    "searxng": SearxngProvider,
}


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


class Rejected(Exception):
    """Fetched, but not an image this crawler keeps (the reason is the message)."""


def inspect_image(body: bytes, *, min_side: int = 64, max_pixels: int = 40_000_000) -> tuple[str, Image.Image]:
    """(file extension, decoded image); raises Rejected if `body` is not a complete image of an
    allowed format and size."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns about images a little over its pixel limit; they are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(body)) as probe:
                fmt = probe.format or ""
                if fmt not in IMAGE_FORMATS:
                    raise Rejected(f"format {fmt or 'unknown'} is not one of {', '.join(IMAGE_FORMATS)}")
                if probe.width * probe.height > max_pixels:
                    raise Rejected(f"{probe.width}x{probe.height} is over {max_pixels} pixels")
                probe.verify()  # checks the structure (e.g. PNG chunk CRCs) without decoding
            image = Image.open(io.BytesIO(body))
            image.load()  # decodes everything: a truncated file fails here
    except Rejected:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise Rejected(f"not a readable image ({exc})") from None
    if min(image.size) < min_side:
        raise Rejected(f"{image.width}x{image.height} is smaller than {min_side} px a side")
    return IMAGE_FORMATS[fmt], image


# ---------------------------------------------------------------------------------------------
# State, manifest, crawler
# ---------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers see the old or the new file, whole (bot.files.atomic.write_atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(json.dumps(data, ensure_ascii=False, indent=1) + "\n"))


def folder_name(query: str) -> str:
    """The query as a folder name: path separators and characters Windows refuses become spaces."""
    name = re.sub(r'[\x00-\x1f<>:"/\\|?*]+', " ", query)
    name = " ".join(name.split()).strip(". ")[:100].rstrip(". ")
    if not name:
        raise CrawlError(f"query {query!r} has no characters usable in a folder name")
    return name


@dataclass
class CrawlOptions:
    per_query: int = 100
    caption_template: str = DEFAULT_CAPTION_TEMPLATE
    max_pages: int = 20
    max_bytes: int = 20 * 1024 * 1024
    min_side: int = 64
    hash_distance: int = DEFAULT_DUP_DISTANCE  # of 64 pHash bits, as `imagebot data validate`

    def check(self) -> None:
        if self.per_query < 1:
            raise CrawlError(f"--per-query must be at least 1, got {self.per_query}")
        if self.max_pages < 1:
            raise CrawlError(f"--max-pages must be at least 1, got {self.max_pages}")
        if self.max_bytes < 1024:
            raise CrawlError(f"--max-bytes must be at least 1024, got {self.max_bytes}")
        if self.min_side < 1:
            raise CrawlError(f"--min-size must be at least 1, got {self.min_side}")
        if not 0 <= self.hash_distance <= 32:
            raise CrawlError(f"--hash-distance must be 0 to 32 bits (of 64), got {self.hash_distance}")
        check_template(self.caption_template, CAPTION_FIELDS, CrawlError)


@dataclass
class QueryResult:
    query: str
    folder: str
    total: int = 0  # images of this query in the folder, earlier runs included
    saved: int = 0  # saved by this run
    duplicates: int = 0
    rejected: int = 0
    failed: int = 0  # network failures, tried again next run
    error: str = ""  # the search itself failed


@dataclass
class Crawler:
    out: Path
    provider: Provider
    fetcher: Fetcher
    options: CrawlOptions = field(default_factory=CrawlOptions)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.state_path = self.out / STATE_FILE
        self.manifest_path = self.out / MANIFEST_FILE
        self.state = self._load_state()
        try:
            # Records already there (captions edited or generated since) are kept as they are.
            self.manifest = read_manifest(self.manifest_path) if self.manifest_path.exists() else []
        except ManifestError as exc:
            raise CrawlError(f"{exc}; fix it or move it away") from None
        self._sha = {info["sha256"]: link for link, info in self.state["images"].items()}

    def _load_state(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"version": 1, "queries": {}, "urls": {}, "images": {}}
        try:
            state = json.loads(self.state_path.read_text(encoding="utf-8"))
            if not all(isinstance(state.get(key), dict) for key in ("queries", "urls", "images")):
                raise ValueError("missing queries, urls or images")
        except (ValueError, AttributeError) as exc:
            raise CrawlError(f"{self.state_path} is not a crawl state ({exc}); move it away to "
                             "start afresh") from None
        return state

    def save(self) -> None:
        write_json_atomic(self.state_path, self.state)
        write_manifest(self.manifest, self.manifest_path)

    def run(self, queries: list[str]) -> list[QueryResult]:
        self.out.mkdir(parents=True, exist_ok=True)
        results = []
        try:
            for query in queries:
                results.append(self.crawl_query(query))
        finally:
            self.save()  # also on Ctrl-C: what was downloaded stays known
        return results

    def crawl_query(self, query: str) -> QueryResult:
        queries = self.state["queries"]
        if query not in queries:
            # The number k in Image_<k>_<n> is fixed at first sight, so reruns keep file names stable.
            queries[query] = {"index": len(queries), "folder": folder_name(query), "count": 0, "next": 0}
        entry = queries[query]
        result = QueryResult(query, entry["folder"], total=entry["count"])
        page: str | None = None
        seen_this_run: set[str] = set()
        for _ in range(self.options.max_pages):
            if entry["count"] >= self.options.per_query:
                break
            try:
                found = self.provider.search(query, page)
            except FetchError as exc:
                result.error = str(exc)
                log.warning("%s: search failed: %s", query, exc)
                break
            fresh = [u for u in dict.fromkeys(found.image_urls) if u not in seen_this_run]
            if not fresh:
                break  # an empty page, or the engine repeating itself
            seen_this_run.update(fresh)
            for url in fresh:
                if entry["count"] >= self.options.per_query:
                    break
                if url not in self.state["urls"]:
                    self._take(url, query, entry, result)
            self.save()
            if not found.next_page:
                break
            page = found.next_page
        result.total = entry["count"]
        return result

    def _take(self, url: str, query: str, entry: dict[str, Any], result: QueryResult) -> None:
        urls = self.state["urls"]
        try:
            response = self.fetcher.get(url, self.options.max_bytes)
            if not 200 <= response.status < 300:
                raise Rejected(f"HTTP {response.status}")
            kind = response.content_type
            # Many servers send images as octet-stream or with no type; Pillow decides then.
            if kind and not kind.startswith("image/") and kind != "application/octet-stream":
                raise Rejected(f"content type {kind} is not an image")
            ext, image = inspect_image(response.body, min_side=self.options.min_side)
        except Disallowed as exc:
            log.info("skipped, %s", exc)
            urls[url] = "disallowed by robots.txt"
            result.rejected += 1
            return
        except FetchError as exc:
            log.info("failed: %s", exc)
            if exc.permanent:
                urls[url] = f"failed: {exc}"
            result.failed += 1
            return
        except Rejected as exc:
            log.info("rejected %s: %s", url, exc)
            urls[url] = f"rejected: {exc}"
            result.rejected += 1
            return

        sha = hashlib.sha256(response.body).hexdigest()
        perceptual = phash(image)
        twin = self._sha.get(sha) or next(
            (link for link, info in self.state["images"].items()
             if (int(info["phash"], 16) ^ perceptual).bit_count() <= self.options.hash_distance), None)
        if twin:
            log.info("duplicate of %s: %s", twin, url)
            urls[url] = f"duplicate of {twin}"
            result.duplicates += 1
            return

        folder = self.out / entry["folder"]
        folder.mkdir(parents=True, exist_ok=True)
        number = entry["next"]
        while any(folder.glob(f"Image_{entry['index']}_{number}.*")):
            number += 1  # a file someone put there by hand keeps its name
        path = folder / f"Image_{entry['index']}_{number}.{ext}"
        write_atomic(path, lambda f: f.write(response.body), binary=True)
        link = f"{entry['folder']}/{path.name}"
        entry["next"] = number + 1
        entry["count"] += 1
        urls[url] = f"saved as {link}"
        self.state["images"][link] = {"sha256": sha, "phash": f"{perceptual:016x}", "source": url, "query": query}
        self._sha[sha] = link
        caption = self.options.caption_template.format(query=query, category=entry["folder"])
        self.manifest.append(Record(link, caption, {"category": entry["folder"], "source": url}, path=path))
        result.saved += 1
        self.save()  # after every image, so an interrupted run never downloads it again


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def read_queries_file(path: str | Path) -> list[str]:
    """One query per line; blank lines and lines starting with '#' are ignored."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CrawlError(f"cannot read the queries file {path}: {exc.strerror or exc}") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def add_commands(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "crawl", help="download images per search query into OUT/<query>/ with a manifest",
        description="Download images for each query into OUT/<query>/Image_<k>_<n>.<ext> and write "
                    "OUT/manifest.json (link, caption, category, source). Reruns continue where the "
                    "last run stopped. Respect the sites' terms and the images' licences.")
    p.add_argument("queries", nargs="*", metavar="QUERY", help="search queries (one folder each)")
    p.add_argument("--queries-file", help="a text file with one query per line ('#' comments)")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--per-query", type=int, default=100, help="images to keep per query (default 100)")
    p.add_argument("--provider", default="bing", help=f"search provider: {', '.join(PROVIDERS)} (default bing)")
    p.add_argument("--base-url", help="the provider's address (bing: its result page; searxng: the instance)")
    p.add_argument("--delay", type=float, default=1.0, help="minimum seconds between requests to one host (default 1)")
    p.add_argument("--timeout", type=float, default=20.0, help="seconds one read may wait (default 20)")
    p.add_argument("--deadline", type=float, default=120.0,
                   help="seconds one request may take in all, however slowly the server answers (default 120)")
    p.add_argument("--allow-private-addresses", action="store_true",
                   help="let result links and redirects reach loopback and private (LAN) addresses")
    p.add_argument("--retries", type=int, default=3, help="retries on 5xx, 429 and network errors (default 3)")
    p.add_argument("--max-pages", type=int, default=20, help="result pages per query at most (default 20)")
    p.add_argument("--max-bytes", type=int, default=20 * 1024 * 1024, help="largest image in bytes (default 20 MiB)")
    p.add_argument("--min-size", type=int, default=64, help="smallest image side in pixels (default 64)")
    p.add_argument("--hash-distance", type=int, default=DEFAULT_DUP_DISTANCE,
                   help="images whose perceptual hashes differ in at most this many of 64 bits are "
                        f"duplicates (0-32, default {DEFAULT_DUP_DISTANCE})")
    p.add_argument("--caption-template", default=DEFAULT_CAPTION_TEMPLATE,
                   help="caption of each image; fields {query}, {category} (default %(default)r)")
    p.set_defaults(func=run_crawl)


def run_crawl(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        queries = list(args.queries) + (read_queries_file(args.queries_file) if args.queries_file else [])
        if not queries:
            raise CrawlError("give at least one QUERY or --queries-file FILE")
        if args.provider not in PROVIDERS:
            raise CrawlError(f"unknown provider {args.provider!r}; available: {', '.join(PROVIDERS)}")
        for name, value, low in (("--delay", args.delay, 0), ("--timeout", args.timeout, 0.1),
                                 ("--deadline", args.deadline, 0.1), ("--retries", args.retries, 0)):
            if value < low:
                raise CrawlError(f"{name} must be at least {low}, got {value}")
        options = CrawlOptions(per_query=args.per_query, caption_template=args.caption_template,
                               max_pages=args.max_pages, max_bytes=args.max_bytes,
                               min_side=args.min_size, hash_distance=args.hash_distance)
        options.check()
        fetcher = Fetcher(delay=args.delay, timeout=args.timeout, deadline=args.deadline, retries=args.retries,
                          allow_private_addresses=args.allow_private_addresses)
        provider = PROVIDERS[args.provider](fetcher, args.base_url)
        crawler = Crawler(Path(args.out), provider, fetcher, options)
    except CrawlError as exc:
        print(f"imagebot data crawl: {exc}", file=sys.stderr)
        return 2
    try:
        results = crawler.run(list(dict.fromkeys(queries)))
    except OSError as exc:  # the output folder cannot be written (full disk, permissions)
        print(f"imagebot data crawl: {exc}", file=sys.stderr)
        return 1
    for r in results:
        line = (f"{r.query}: {r.total} images in {r.folder}/ ({r.saved} new, {r.duplicates} duplicates, "
                f"{r.rejected} rejected, {r.failed} failed)")
        print(line + (f"; search failed: {r.error}" if r.error else ""))
    print(f"manifest: {crawler.manifest_path}")
    return 1 if any(r.error for r in results) else 0
