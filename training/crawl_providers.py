"""Search providers of `imagebot data crawl`: one page of image URLs for a query.

Providers are small classes (`Provider`) registered in `PROVIDERS`: `bing` (Bing's image search
result page, the reference project's source) and `searxng` (the JSON API of a SearXNG instance,
e.g. a self-hosted one). Users must respect each site's terms and the images' licences.
"""

from __future__ import annotations

import html.parser
import json
import urllib.parse
from dataclasses import dataclass
from typing import Callable, Protocol

from training.crawl_http import CrawlError, Fetcher, FetchError


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

