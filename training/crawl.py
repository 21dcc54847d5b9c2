"""Crawl images by search query into the reference project's folder layout, with a manifest.

    imagebot data crawl "Vietnam ao dai" "Vietnam food" -o data/vietnam --per-query 200
    imagebot data crawl --queries-file data/prompts/vietnam-categories.txt -o data/vietnam

Output folder:

    <out>/<query>/Image_<k>_<n>.<ext>   k = the query's number, n = the image's number in it
    <out>/manifest.json                 [{"link", "caption", "category", "source"}], links relative
    <out>/.crawl-state.json             what was seen, so a rerun continues where it stopped

How it behaves towards the sites it visits (User-Agent, robots.txt, delays, deadlines, retries,
no requests into this machine's own network) is training.crawl_http's job; the search engines are
training.crawl_providers. An image must have an image (or unnamed) content type and decode
completely with Pillow, as JPEG, PNG or WebP, at least `--min-size` pixels a side.

Duplicates are dropped by URL, by exact content (SHA-256) and by a perceptual hash
(training.manifest.phash, 64 bits) for re-encoded or resized copies. The state file records every URL with its outcome,
so a rerun never fetches an image URL twice (network failures excepted: they are tried again).

Users must respect each site's terms and the images' licences.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot.files.atomic import write_atomic
from training.crawl_http import CrawlError, Disallowed, Fetcher, FetchError
from training.crawl_providers import PROVIDERS, Provider
from training.manifest import (
    DEFAULT_DUP_DISTANCE,
    ManifestError,
    Record,
    check_template,
    phash,
    read_manifest,
    write_manifest,
)

# Still importable from here, where the crawl's callers and tests have always found them.
from training.crawl_http import (PAGE_MAX_BYTES, USER_AGENT, RateLimiter,  # noqa: F401
                                  normalise_url, parse_retry_after)
from training.crawl_providers import BingProvider, ResultPage, SearxngProvider, parse_bing_page  # noqa: F401

log = logging.getLogger(__name__)

STATE_FILE = ".crawl-state.json"
MANIFEST_FILE = "manifest.json"
DEFAULT_CAPTION_TEMPLATE = "a photo of {query}"
CAPTION_FIELDS = ("query", "category")

# Pillow format -> file extension; anything else is rejected. The same set training.manifest
# lists from folders (GIF is mostly animations, BMP rare: neither is worth a re-encode).
IMAGE_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


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
