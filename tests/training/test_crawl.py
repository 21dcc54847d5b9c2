"""training.crawl against a local HTTP server started by the tests (never the internet)."""

from __future__ import annotations

import html
import io
import json
import logging
import random
import threading
import urllib.parse
import urllib.robotparser
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from training import crawl, data_cli
from training.crawl import (USER_AGENT, BingProvider, Crawler, CrawlOptions, Fetcher, FetchError,
                            RateLimiter, SearxngProvider, inspect_image, parse_bing_page, parse_retry_after)
from training.manifest import phash, read_manifest


def picture(seed: int, size: int = 96) -> Image.Image:
    """A distinct picture per seed: a gradient with random rectangles and ellipses."""
    rng = random.Random(seed)
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x, y = rng.randrange(size - 20), rng.randrange(size - 20)
        w, h = rng.randrange(10, size // 2), rng.randrange(10, size // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x, y, x + w, y + h), fill=colour)
    return image


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


A_PNG = encode(picture(1), "PNG")
A_JPEG_COPY = encode(picture(1).resize((80, 80)), "JPEG", quality=80)  # the same picture, re-encoded
B_JPEG = encode(picture(2), "JPEG", quality=90)
C_PNG = encode(picture(3), "PNG")
D_PNG = encode(picture(4), "PNG")
E_JPEG = encode(picture(5), "JPEG")
F_PNG = encode(picture(6), "PNG")
PRIVATE_PNG = encode(picture(7), "PNG")
TINY_PNG = encode(picture(8).resize((16, 16)), "PNG")
BROKEN_JPEG = B_JPEG[: len(B_JPEG) // 2]  # truncated
HTML = b"<!doctype html><html><body>Not an image</body></html>"

# path -> (content type, body). /img/flaky-* fail on their first request (see Handler).
IMAGES = {
    "/img/a.png": ("image/png", A_PNG),
    "/img/a-mirror.png": ("image/png", A_PNG),  # exact duplicate under another URL
    "/img/a-small.jpg": ("image/jpeg", A_JPEG_COPY),  # re-encoded duplicate
    "/img/b.jpg": ("image/jpeg", B_JPEG),
    "/img/broken.jpg": ("image/jpeg", BROKEN_JPEG),
    "/img/page.jpg": ("image/jpeg", HTML),  # an HTML page claiming to be a JPEG
    "/img/page.html": ("text/html; charset=utf-8", HTML),
    "/img/tiny.png": ("image/png", TINY_PNG),
    "/private/d.png": ("image/png", PRIVATE_PNG),  # robots.txt disallows /private/
    "/img/flaky-429.png": ("image/png", C_PNG),
    "/img/flaky-500.png": ("image/png", D_PNG),
    "/img/e.jpg": ("application/octet-stream", E_JPEG),
    "/img/f.png": ("image/png", F_PNG),
}
# The order a search for "ao dai" lists them: 3 per page.
RESULTS = ["/img/a.png", "/img/a-mirror.png", "/img/a-small.jpg",
           "/img/b.jpg", "/img/broken.jpg", "/img/page.jpg",
           "/img/page.html", "/img/tiny.png", "/private/d.png",
           "/img/flaky-429.png", "/img/flaky-500.png", "/img/missing.png",
           "/img/e.jpg", "/img/f.png"]
KEPT = ["/img/a.png", "/img/b.jpg", "/img/flaky-429.png", "/img/flaky-500.png", "/img/e.jpg", "/img/f.png"]
PAGE_SIZE = 3


class QuietHandler(BaseHTTPRequestHandler):
    """A test server's handler: no request log, and one way to answer."""

    def log_message(self, *args) -> None:
        pass

    def send(self, status: int, kind: str, body: bytes, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class Server:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.user_agents: set[str] = set()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def _handler(self):
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                parts = urllib.parse.urlsplit(self.path)
                with server.lock:
                    server.hits[parts.path] += 1
                    server.user_agents.add(self.headers.get("User-Agent", ""))
                    hits = server.hits[parts.path]
                params = dict(urllib.parse.parse_qsl(parts.query))
                if parts.path == "/robots.txt":
                    self.send(200, "text/plain", b"User-agent: *\nDisallow: /private/\n")
                elif parts.path == "/images/async":
                    self.send(200, "text/html; charset=utf-8", server.bing_page(params))
                elif parts.path == "/search":
                    self.send(200, "application/json", server.searxng_page(params))
                elif parts.path == "/img/flaky-429.png" and hits == 1:
                    self.send(429, "text/plain", b"slow down", {"Retry-After": "7"})
                elif parts.path == "/img/flaky-500.png" and hits == 1:
                    self.send(500, "text/plain", b"oops")
                elif parts.path == "/img/moved.png":
                    self.send(302, "text/plain", b"", {"Location": "/private/d.png"})
                elif parts.path in IMAGES:
                    kind, body = IMAGES[parts.path]
                    self.send(200, kind, body)
                else:
                    self.send(404, "text/plain", b"not found")

        return Handler

    def bing_page(self, params: dict) -> bytes:
        first = int(params.get("first", 1))
        assert params.get("q") == "ao dai"
        chunk = RESULTS[first - 1:first - 1 + PAGE_SIZE]
        items = "".join(
            f'<a class="iusc" m="{html.escape(json.dumps({"murl": self.url(p), "turl": "x"}))}" href="#">x</a>'
            for p in chunk)
        return f"<html><body><div>{items}</div></body></html>".encode()

    def searxng_page(self, params: dict) -> bytes:
        assert params["format"] == "json" and params["categories"] == "images"
        number = int(params["pageno"])
        chunk = ["/img/b.jpg", "/img/e.jpg"] if number == 1 else ["/img/f.png"] if number == 2 else []
        return json.dumps({"query": params["q"], "results": [
            {"url": "https://example.org/page", "img_src": self.url(p)} for p in chunk]}).encode()

    def image_hits(self) -> Counter[str]:
        return Counter({p: n for p, n in self.hits.items() if p.startswith(("/img/", "/private/"))})


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


class Sleeps(list):
    """A sleep that records instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_crawler(server: Server, out: Path, per_query: int = 20, fetcher: Fetcher | None = None,
                 **options) -> Crawler:
    fetcher = fetcher or Fetcher(delay=0, timeout=10, retries=2, backoff=0.5, sleep=Sleeps())
    provider = BingProvider(fetcher, server.url("/images/async"))
    return Crawler(out, provider, fetcher, CrawlOptions(per_query=per_query, min_side=32, **options))


def test_pictures_are_told_apart_and_copies_are_not():
    # The premise of the dedupe tests: distinct pictures are far apart, the re-encoded copy close.
    hashes = [phash(Image.open(io.BytesIO(body))) for body in (A_PNG, B_JPEG, C_PNG, D_PNG, E_JPEG, F_PNG)]
    distances = [bin(a ^ b).count("1") for i, a in enumerate(hashes) for b in hashes[i + 1:]]
    assert min(distances) > 12
    assert bin(hashes[0] ^ phash(Image.open(io.BytesIO(A_JPEG_COPY)))).count("1") <= 4


def test_crawl_layout_manifest_dedupe_robots_and_retries(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.crawl")
    crawler = make_crawler(server, tmp_path / "out", caption_template="{query}, a photo")
    [result] = crawler.run(["ao dai"])

    folder = tmp_path / "out" / "ao dai"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["Image_0_0.png", "Image_0_1.jpg", "Image_0_2.png", "Image_0_3.png",
                     "Image_0_4.jpg", "Image_0_5.png"]
    assert (result.saved, result.total, result.duplicates) == (6, 6, 2)
    assert result.rejected == 5  # broken, HTML as JPEG, HTML, tiny, robots
    assert result.failed == 1  # the 404
    # Files are the bytes served, in search order.
    for name, path in zip(files, KEPT):
        assert (folder / name).read_bytes() == IMAGES[path][1]

    records = read_manifest(tmp_path / "out" / "manifest.json")
    assert [r.link for r in records] == [f"ao dai/{name}" for name in files]
    assert [r.extra["source"] for r in records] == [server.url(p) for p in KEPT]
    assert {r.caption for r in records} == {"ao dai, a photo"}
    assert {r.extra["category"] for r in records} == {"ao dai"}
    assert all(r.path.is_file() for r in records)

    # robots.txt was read once and /private/ never requested; every request named the project.
    assert server.hits["/robots.txt"] == 1
    assert server.hits["/private/d.png"] == 0
    assert "disallowed by robots.txt" in caplog.text and "/private/d.png" in caplog.text
    assert server.user_agents == {USER_AGENT}
    # 429 waited for its Retry-After; the 500 was retried after the first back-off step.
    assert server.hits["/img/flaky-429.png"] == 2 and server.hits["/img/flaky-500.png"] == 2
    assert crawler.fetcher.sleep == [7.0, 0.5]

    state = json.loads((tmp_path / "out" / crawl.STATE_FILE).read_text())
    urls = state["urls"]
    assert urls[server.url("/img/a-mirror.png")] == "duplicate of ao dai/Image_0_0.png"
    assert urls[server.url("/img/a-small.jpg")] == "duplicate of ao dai/Image_0_0.png"
    assert urls[server.url("/img/page.jpg")].startswith("rejected: not a readable image")
    assert urls[server.url("/img/page.html")] == "rejected: content type text/html is not an image"
    assert urls[server.url("/img/broken.jpg")].startswith("rejected: not a readable image")
    assert urls[server.url("/img/tiny.png")].startswith("rejected: 16x16 is smaller than 32 px")
    assert urls[server.url("/private/d.png")] == "disallowed by robots.txt"
    assert urls[server.url("/img/missing.png")].startswith("failed: HTTP 404")


def test_rerun_continues_without_downloading_again(server, tmp_path):
    out = tmp_path / "out"
    first = make_crawler(server, out, per_query=2).run(["ao dai"])[0]
    assert (first.saved, first.total) == (2, 2)
    assert server.image_hits() == Counter({"/img/a.png": 1, "/img/a-mirror.png": 1, "/img/a-small.jpg": 1,
                                           "/img/b.jpg": 1})

    # Same goal: nothing left to do, not even a search.
    before = sum(server.hits.values())
    again = make_crawler(server, out, per_query=2).run(["ao dai"])[0]
    assert (again.saved, again.total) == (0, 2) and sum(server.hits.values()) == before

    # A larger goal: the search is repeated, but no image URL is fetched a second time.
    more = make_crawler(server, out, per_query=20).run(["ao dai"])[0]
    assert (more.saved, more.total) == (4, 6)
    hits = server.image_hits()
    assert all(hits[p] == (2 if "flaky" in p else 1) for p in hits), hits
    assert sorted(p.name for p in (out / "ao dai").iterdir())[:2] == ["Image_0_0.png", "Image_0_1.jpg"]
    assert len(read_manifest(out / "manifest.json")) == 6


def test_interrupted_run_keeps_what_it_downloaded(server, tmp_path):
    class Interrupting(Fetcher):
        def get(self, url, max_bytes=crawl.PAGE_MAX_BYTES):
            if url.endswith("/img/page.jpg"):
                raise KeyboardInterrupt
            return super().get(url, max_bytes)

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        make_crawler(server, out, fetcher=Interrupting(delay=0, retries=0, sleep=Sleeps())).run(["ao dai"])
    assert [r.link for r in read_manifest(out / "manifest.json")] == ["ao dai/Image_0_0.png", "ao dai/Image_0_1.jpg"]
    done = server.image_hits()

    make_crawler(server, out).run(["ao dai"])
    hits = server.image_hits()
    for path in done:  # nothing fetched before the interruption was fetched again
        assert hits[path] == done[path], path
    assert len(read_manifest(out / "manifest.json")) == 6


def test_manifest_records_written_by_others_are_kept(server, tmp_path):
    out = tmp_path / "out"
    make_crawler(server, out, per_query=1).run(["ao dai"])
    records = read_manifest(out / "manifest.json")
    records[0].caption = "a woman in a white ao dai"  # e.g. written by `imagebot data caption`
    from training.manifest import write_manifest
    write_manifest(records, out / "manifest.json")

    make_crawler(server, out, per_query=2).run(["ao dai"])
    captions = [r.caption for r in read_manifest(out / "manifest.json")]
    assert captions == ["a woman in a white ao dai", "a photo of ao dai"]


def test_two_queries_get_their_own_numbers_and_folders(server, tmp_path):
    fetcher = Fetcher(allow_private_addresses=True, delay=0, retries=0, sleep=Sleeps())
    crawler = Crawler(tmp_path, SearxngProvider(fetcher, server.base), fetcher, CrawlOptions(per_query=5, min_side=32))
    results = crawler.run(["Vietnam food", "Vietnam/art?"])
    assert [(r.folder, r.saved) for r in results] == [("Vietnam food", 3), ("Vietnam art", 0)]
    assert sorted(p.name for p in (tmp_path / "Vietnam food").iterdir()) == ["Image_0_0.jpg", "Image_0_1.jpg",
                                                                            "Image_0_2.png"]
    # The second query found the same images again: all duplicates by URL, nothing fetched twice.
    assert server.image_hits() == Counter({"/img/b.jpg": 1, "/img/e.jpg": 1, "/img/f.png": 1})
    state = json.loads((tmp_path / crawl.STATE_FILE).read_text())
    assert state["queries"]["Vietnam/art?"] == {"index": 1, "folder": "Vietnam art", "count": 0, "next": 0}


def test_redirect_into_a_disallowed_path_is_not_followed(server, tmp_path):
    fetcher = Fetcher(allow_private_addresses=True, delay=0, retries=0, sleep=Sleeps())
    with pytest.raises(crawl.Disallowed):
        fetcher.get(server.url("/img/moved.png"))
    assert server.hits["/img/moved.png"] == 1 and server.hits["/private/d.png"] == 0


def test_unreachable_robots_means_no_crawling_and_missing_means_all(tmp_path):
    class Scripted(Fetcher):
        def __init__(self, status):
            super().__init__(delay=0, retries=1, sleep=Sleeps())
            self.status = status

        def _get_with_retries(self, url, max_bytes):
            error = FetchError(f"HTTP {self.status}", permanent=self.status < 500)
            error.status = self.status
            raise error

    assert Scripted(404).allowed("http://site.test/a.png")
    assert not Scripted(503).allowed("http://site.test/a.png")


def test_network_errors_are_retried_then_reported(tmp_path):
    sleeps = Sleeps()
    # Port 9 on localhost: nothing listens, the connection is refused.
    fetcher = Fetcher(allow_private_addresses=True, delay=0, retries=2, backoff=1.0, timeout=2, sleep=sleeps)
    fetcher._robots["http://127.0.0.1:9"] = urllib.robotparser.RobotFileParser()
    fetcher._robots["http://127.0.0.1:9"].allow_all = True
    with pytest.raises(FetchError) as info:
        fetcher.get("http://127.0.0.1:9/a.png")
    assert "after 3 attempts" in str(info.value) and not info.value.permanent
    assert sleeps == [1.0, 2.0] and fetcher.requests == 3


def test_size_limit(server):
    fetcher = Fetcher(allow_private_addresses=True, delay=0, retries=0, sleep=Sleeps())
    with pytest.raises(FetchError, match="over the 1024 byte limit"):
        fetcher.get(server.url("/img/a.png"), max_bytes=1024)


def test_rate_limiter_spaces_requests_per_host():
    now = [100.0]
    sleeps = Sleeps()
    limiter = RateLimiter(2.0, clock=lambda: now[0], sleep=sleeps)
    assert limiter.wait("a.test") == 0.0
    now[0] = 100.5
    assert limiter.wait("a.test") == 1.5  # 2 s after the first request
    assert limiter.wait("b.test") == 0.0  # another host is not held back
    assert limiter.wait("a.test") == 3.5  # the clock stays at 100.5; the next slot is 104.0
    now[0] = 110.0
    assert limiter.wait("a.test", min_interval=5.0) == 0.0
    assert limiter.wait("a.test", min_interval=5.0) == 5.0  # a robots.txt Crawl-delay wins when longer
    assert sleeps == [1.5, 3.5, 5.0]


def test_fetcher_waits_between_requests_to_one_host(server):
    now = [0.0]
    sleeps = Sleeps()
    fetcher = Fetcher(allow_private_addresses=True, delay=3.0, retries=0, clock=lambda: now[0], sleep=sleeps)
    fetcher.get(server.url("/img/a.png"))
    fetcher.get(server.url("/img/b.jpg"))
    # robots.txt at t=0, a.png at 3, b.jpg at 6; the fake clock stays at 0, so the waits are 3 and 6.
    assert sleeps == [3.0, 6.0]


def test_retry_after_forms():
    from datetime import datetime, timezone

    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None and parse_retry_after(None) is None


def test_bing_page_parsing():
    page = ('<a class="iusc" m="{&quot;murl&quot;:&quot;https://a.test/1.jpg&quot;}">'
            '<a class="iusc" m="{&quot;turl&quot;:&quot;https://a.test/t.jpg&quot;}">'
            '<a class="iusc" m="not json"><div m="{&quot;murl&quot;:&quot;https://b.test/2.png?x=1&amp;y=2&quot;}">')
    assert parse_bing_page(page) == (["https://a.test/1.jpg", "https://b.test/2.png?x=1&y=2"], 4)


def test_bing_pagination(server):
    provider = BingProvider(Fetcher(delay=0, retries=0, sleep=Sleeps()), server.url("/images/async"))
    first = provider.search("ao dai", None)
    assert first.image_urls == [server.url(p) for p in RESULTS[:3]] and first.next_page == "4"
    last = provider.search("ao dai", "13")
    assert last.image_urls == [server.url(p) for p in RESULTS[12:]] and last.next_page == "15"
    assert provider.search("ao dai", "15") == crawl.ResultPage([], None)


def test_inspect_image_rejections():
    assert inspect_image(B_JPEG, min_side=32)[0] == "jpg"
    for body, reason in ((BROKEN_JPEG, "not a readable image"), (HTML, "not a readable image"),
                         (encode(picture(9), "GIF"), "format GIF is not one of JPEG, PNG, WEBP"),
                         (TINY_PNG, "smaller than 32 px")):
        with pytest.raises(crawl.Rejected, match=reason):
            inspect_image(body, min_side=32)
    with pytest.raises(crawl.Rejected, match="over 1000 pixels"):
        inspect_image(A_PNG, min_side=1, max_pixels=1000)


def test_cli_crawls_with_a_queries_file(server, tmp_path, capsys):
    queries = tmp_path / "queries.txt"
    queries.write_text("# categories\nVietnam food\n\n", encoding="utf-8")
    code = data_cli.main(["crawl", "--queries-file", str(queries), "-o", str(tmp_path / "out"), "--provider", "searxng",
                    "--base-url", server.base, "--delay", "0", "--min-size", "32", "--per-query", "2"])
    assert code == 0
    assert "Vietnam food: 2 images in Vietnam food/ (2 new" in capsys.readouterr().out
    assert [r.caption for r in read_manifest(tmp_path / "out" / "manifest.json")] == ["a photo of Vietnam food"] * 2


@pytest.mark.parametrize("argv, message", [
    ([], "give at least one QUERY or --queries-file FILE"),
    (["x", "--provider", "google"], "unknown provider 'google'; available: bing, searxng"),
    (["x", "--provider", "searxng"], "--provider searxng needs --base-url"),
    (["x", "--per-query", "0"], "--per-query must be at least 1"),
    (["x", "--caption-template", "{place}"], "allowed fields: {query}, {category}"),
    (["x", "--delay", "-1"], "--delay must be at least 0"),
    (["--queries-file", "/nonexistent/q.txt"], "cannot read the queries file"),
])
def test_cli_bad_input(tmp_path, capsys, argv, message):
    assert data_cli.main(["crawl", "-o", str(tmp_path / "out"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_failed_search(tmp_path, capsys):
    # Nothing listens on port 9: robots.txt is unreachable, so the host is not crawled at all.
    code = data_cli.main(["crawl", "x", "-o", str(tmp_path / "out"), "--base-url", "http://127.0.0.1:9/images/async",
                    "--delay", "0", "--retries", "0", "--timeout", "2"])
    assert code == 1
    assert "x: 0 images in x/ (0 new, 0 duplicates, 0 rejected, 0 failed); search failed: disallowed by robots.txt" \
        in capsys.readouterr().out


def test_robots_crawl_delay_lengthens_the_delay(server):
    sleeps = Sleeps()
    fetcher = Fetcher(allow_private_addresses=True, delay=1.0, retries=0, clock=lambda: 0.0, sleep=sleeps)
    robots = urllib.robotparser.RobotFileParser()
    robots.parse(["User-agent: ImageChatbot-crawler", "Crawl-delay: 4", "Disallow: /private/"])
    robots.modified()
    fetcher._robots[server.base] = robots  # as if read from the site
    fetcher.get(server.url("/img/a.png"))
    fetcher.get(server.url("/img/b.jpg"))
    assert sleeps == [4.0] and server.hits["/robots.txt"] == 0
    with pytest.raises(crawl.Disallowed):
        fetcher.get(server.url("/private/d.png"))  # the group naming this crawler applies to it


def test_urls_from_results_are_made_requestable():
    assert crawl.normalise_url(" https://a.test/ảnh áo dài.jpg?q=a b&x=%20#top ") == \
        "https://a.test/%E1%BA%A3nh%20%C3%A1o%20d%C3%A0i.jpg?q=a%20b&x=%20"
    assert crawl.normalise_url("http://bücher.test:8080/x") == "http://xn--bcher-kva.test:8080/x"
    with pytest.raises(FetchError, match="not an http"):
        Fetcher(allow_private_addresses=True, delay=0, sleep=Sleeps()).get("ftp://a.test/x.png")


class Neighbour:
    """A search service the user named (trusted) whose results and redirects point into this
    machine's own network under another name, plus a page that drips one byte at a time."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        neighbour = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                path = urllib.parse.urlsplit(self.path).path
                neighbour.hits[path] += 1
                inside = f"http://localhost:{neighbour.port}/img/a.png"  # the same server, by another name
                if path == "/search":
                    results = [{"url": "https://example.org", "img_src": inside},
                               {"url": "https://example.org", "img_src": f"{neighbour.base}/img/moved.png"}]
                    self.send(200, "application/json", json.dumps({"results": results}).encode())
                elif path == "/img/moved.png":
                    self.send(302, "text/plain", b"", {"Location": inside})
                elif path == "/drip":
                    self.send_response(200)
                    self.send_header("Content-Length", "100")
                    self.end_headers()
                    for _ in range(100):  # 0.3 s a byte: 30 s for the whole body
                        self.wfile.write(b"x")
                        self.wfile.flush()
                        threading.Event().wait(0.3)
                elif path == "/robots.txt":
                    self.send(404, "text/plain", b"")
                else:
                    self.send(200, *IMAGES["/img/a.png"])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda *args: None  # the dripping answer ends in a broken pipe, on purpose
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def neighbour():
    server = Neighbour()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_result_links_and_redirects_into_the_local_network_are_refused(neighbour, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="training.crawl")
    fetcher = Fetcher(delay=0, retries=0, sleep=Sleeps())
    crawler = Crawler(tmp_path, SearxngProvider(fetcher, neighbour.base), fetcher,
                      CrawlOptions(per_query=5, min_side=32, max_pages=1))
    [result] = crawler.run(["ao dai"])
    assert result.saved == 0
    assert neighbour.hits["/search"] == 1 and neighbour.hits["/img/moved.png"] == 1  # the named service: asked
    assert neighbour.hits["/img/a.png"] == 0  # loopback by another name, directly or by redirect: never reached
    assert caplog.text.count("an address of a private network") >= 2
    with pytest.raises(FetchError, match="private network"):
        fetcher.get(f"http://localhost:{neighbour.port}/img/a.png")
    lan = Fetcher(delay=0, retries=0, sleep=Sleeps(), allow_private_addresses=True)
    assert lan.get(f"http://localhost:{neighbour.port}/img/a.png").status == 200  # a LAN crawl, on purpose


def test_a_server_that_drips_bytes_cannot_hold_a_download_past_its_deadline(neighbour):
    fetcher = Fetcher(delay=0, retries=0, timeout=5, deadline=1.0, sleep=Sleeps(), allow_private_addresses=True)
    with pytest.raises(FetchError, match="deadline"):
        fetcher.get(f"{neighbour.base}/drip")
    assert neighbour.hits["/drip"] == 1
