"""Media feeds: RSS, Atom and JSON Feed documents, by URL or file; each image of a new post is a
frame, the post's keywords its priority."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from wildwatch.errors import DataError, require
from wildwatch.monitor.fetch import Fetcher
from wildwatch.monitor.sources import (
    BaseSource,
    Done,
    Frame,
    Item,
    PostInfo,
    SourceContext,
    SourceSettings,
    register_source,
)
from wildwatch.monitor.textscan import Budget, BudgetExceeded, img_sources, join_unique, strip_tags

log = logging.getLogger("wildwatch.monitor")

# ---------------------------------------------------------------- feeds

MAX_ITEMS = 1000  # items of one feed read per poll: a feed of 100,000 items is cut here, with an error
MAX_POST_TEXT = 8000  # characters of a post's text that are kept
ITEM_BUDGET_S = 30.0  # seconds one post may take (its images fetched): past it, the rest of it is skipped


@dataclass
class Post:
    id: str
    title: str
    text: str
    link: str
    images: list[str]
    account: str = ""


class _Author(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str | None = None


class _Attachment(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str
    mime_type: str = ""


class JsonFeedItem(BaseModel):
    """One JSON Feed item as the spec types it (https://www.jsonfeed.org/version/1.1/): a field of
    another type (a url that is a number, an author that is a list) makes the item an error row."""

    model_config = ConfigDict(extra="ignore")
    id: StrictStr | StrictInt | None = None
    url: StrictStr | None = None
    title: StrictStr | None = None
    summary: StrictStr | None = None
    content_text: StrictStr | None = None
    content_html: StrictStr | None = None
    image: StrictStr | None = None
    banner_image: StrictStr | None = None
    attachments: list[_Attachment] = Field(default_factory=list)
    author: _Author | None = None
    authors: list[_Author] = Field(default_factory=list)


def item_error(source: str, index: int, item, exc: Exception) -> str:
    """An error row for one bad item of a feed or listing: where, which item, what is wrong."""
    ident = item.get("id") if isinstance(item, dict) else None
    what = f"item {index + 1}" + (f" (id {str(ident)[:60]!r})" if isinstance(ident, (str, int)) else "")
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        msg = f"{where}: {first['msg'].lower()} (got {type(first.get('input')).__name__})"
    else:
        msg = str(exc)
    return f"{source}: {what} skipped: {msg}"


def _json_feed(content: bytes, base: str, problems: list[str]) -> list[Post]:
    from urllib.parse import urljoin

    try:
        doc = json.loads(content)
    except ValueError as exc:
        raise DataError(f"{base or 'feed'}: not JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise DataError(f"{base or 'feed'}: JSON without an 'items' list is not a JSON Feed")
    items = doc["items"]
    if len(items) > MAX_ITEMS:
        problems.append(f"{base or 'feed'}: {len(items):,} items; only the first {MAX_ITEMS:,} are read")
    posts = []
    for i, raw in enumerate(items[:MAX_ITEMS]):
        try:
            it = JsonFeedItem.model_validate(raw)
        except ValidationError as exc:
            problems.append(item_error(base or "feed", i, raw, exc))
            continue
        html_text = it.content_html or ""
        text = join_unique([it.title, it.summary, it.content_text, strip_tags(html_text)], MAX_POST_TEXT)
        imgs = [u for u in (it.image, it.banner_image) if u]
        imgs += [a.url for a in it.attachments if a.mime_type.startswith("image/")]
        imgs += img_sources(html_text)
        author = next((a.name for a in ([it.author] if it.author else []) + it.authors if a and a.name), "")
        ident = it.id if it.id is not None else it.url
        if ident is None:
            problems.append(f"{base or 'feed'}: item {i + 1} skipped: no id and no url")
            continue
        posts.append(Post(str(ident), it.title or "", text, it.url or "",
                          [urljoin(base, u) for u in dict.fromkeys(imgs)], author))
    return posts


def _entry_author(e) -> str:
    """An RSS or Atom entry's author: the name (Atom <author><name>, RSS <dc:creator>) or, for RSS
    <author>, which holds an e-mail address and maybe a name in brackets, the name or the address."""
    detail = e.get("author_detail") or {}
    name = detail.get("name") or e.get("author") or ""
    return str(name or detail.get("email") or "")[:200]


def parse_feed(content: bytes, base: str = "", problems: list[str] | None = None) -> list[Post]:
    """Posts of an RSS, Atom or JSON Feed document, with the image URLs and the author of each;
    items that cannot be read are skipped and described in ``problems``."""
    from urllib.parse import urljoin

    problems = problems if problems is not None else []
    if content.lstrip().startswith(b"{"):
        return _json_feed(content, base, problems)
    feedparser = require("feedparser", "monitor", "reading RSS and Atom feeds")

    # the HTML of entries is never rendered (it is reduced to text here), so feedparser need not
    # sanitise it: its sanitiser takes seconds on hostile markup such as repeated "<img"
    doc = feedparser.parse(content, sanitize_html=False, resolve_relative_uris=False)
    if not doc.entries and (doc.bozo or not doc.get("version")):
        raise DataError(f"{base or 'feed'}: not an RSS or Atom feed ({doc.get('bozo_exception')})")
    if len(doc.entries) > MAX_ITEMS:
        problems.append(f"{base or 'feed'}: {len(doc.entries):,} items; only the first {MAX_ITEMS:,} are read")
    posts: list[Post] = []
    for i, e in enumerate(doc.entries[:MAX_ITEMS]):
        try:
            body = " ".join(str(c.get("value", "")) for c in e.get("content", [])) + " " + str(e.get("summary", ""))
            imgs = [m.get("url") for m in e.get("media_content", []) if m.get("url")]
            imgs += [m.get("url") for m in e.get("media_thumbnail", []) if m.get("url")]
            imgs += [ln.get("href") for ln in e.get("links", [])
                     if ln.get("rel") == "enclosure" and str(ln.get("type", "")).startswith("image/")]
            imgs += img_sources(body)
            title = str(e.get("title", ""))
            text = join_unique([title, strip_tags(body)], MAX_POST_TEXT)
            posts.append(Post(str(e.get("id") or e.get("link") or title), title, text, str(e.get("link", "")),
                              [urljoin(base, str(u)) for u in dict.fromkeys(i for i in imgs if i)], _entry_author(e)))
        except (TypeError, ValueError, AttributeError) as exc:
            problems.append(item_error(base or "feed", i, {"id": e.get("id")}, exc))
    return posts


def keyword_hits(text: str, keywords: tuple[str, ...]) -> tuple[str, ...]:
    """Keywords found in ``text`` (whole words or their inflections: 'poach' finds 'poachers')."""
    low = text[:MAX_POST_TEXT].lower()
    return tuple(k for k in keywords if re.search(r"\b" + re.escape(k.lower()), low))


def feed_fetcher(url: str, settings: SourceSettings) -> Fetcher:
    """The guarded fetcher of a feed: the feed's own origin is the user's choice; what its posts
    point at is checked (``monitor.fetch``)."""
    return Fetcher(allow_hosts=tuple(settings.allow_hosts), trusted=(url,), deadline_s=settings.fetch_deadline_s,
                   max_bytes=settings.fetch_max_bytes)


class FeedSource(BaseSource):
    """Posts of a feed (URL or file), polled every ``feed_poll_s``; each image of a new post is a
    frame whose priority is the number of keywords in the post."""

    max_images = 20  # per post: a page of a hundred thumbnails is not a hundred photos to classify
    item_budget_s = ITEM_BUDGET_S

    def __init__(self, url: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None,
                 fetcher=None, name: str | None = None):
        super().__init__(name or url, settings, ctx)
        self.url, self.poll_s, self.once = url, self.settings.feed_poll_s, self.settings.once
        self.keywords = tuple(self.settings.keywords)
        self.finite = self.once
        self.fetcher = fetcher or feed_fetcher(url, self.settings)

    def posts(self) -> list[Post]:
        """The posts there now (a subclass reads a page, an API, a channel instead of a feed); items
        that cannot be read go to ``errors``, one row each."""
        return parse_feed(self.fetcher.fetch(self.url, allow_local=True), self.url, self.errors)

    def fetch_image(self, url: str) -> bytes:
        return self.fetcher.fetch(url, allow_local="://" not in self.url)

    def items(self) -> Iterator[Item]:
        failures = 0
        while not self.stop.is_set():
            try:
                posts = self.posts()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a feed that is down is polled again later
                failures += 1
                log.warning("%s: cannot read feed (%s)", self.url, exc)
                self.errors.append(f"{self.url}: {exc}")
                posts = []
            for post in posts:
                key = f"post:{self.url}#{post.id}"
                if self.progress is None or not self.progress.is_done(key):
                    yield from self._post_items(post, key)
            if self.once:
                return
            self.stop.wait(min(self.poll_s * 2 ** min(failures, 4), 3600) if failures else self.poll_s)

    def _post_items(self, post: Post, key: str) -> Iterator[Item]:
        """A frame per image of the post that loads (its last one finishes the post), or ``Done``."""
        info = PostInfo(key, post.title, post.text, post.link, post.account, keyword_hits(post.text, self.keywords))
        got = self._images(post)
        if not got:
            yield Done(key, key, info)
            return
        for i, (u, img) in enumerate(got):
            yield Frame(f"{self.url}#{post.id}", img, None, i, single=True, link=post.link or u,
                        done_key=key if i == len(got) - 1 else None, post=info)

    def _images(self, post: Post) -> list[tuple[str, Image.Image]]:
        """(url, image) of each of the post's images that loaded, within the post's time budget."""
        from wildwatch.data.loading import ImageLoadError, load_image_bytes

        urls = post.images[:self.max_images]
        budget = Budget(self.item_budget_s, f"{self.url} post {post.id[:80]}")
        got: list[tuple[str, Image.Image]] = []
        for n, u in enumerate(urls):
            try:
                budget.check()
                got.append((u, load_image_bytes(self.fetch_image(u), u)))
            except BudgetExceeded as exc:  # one slow post does not hold up this source's others
                self.errors.append(f"{exc} ({len(urls) - n} of its images not fetched)")
                break
            except (OSError, ValueError, ImageLoadError) as exc:
                log.warning("%s: image %s skipped (%s)", self.url, u, exc)
                self.errors.append(f"{u}: {exc}")
        return got


def _feed_suffix(spec: str) -> bool:
    return spec.lower().split("?")[0].endswith((".xml", ".rss", ".atom", ".json"))


@register_source("feed", prefixes=("feed:",), claims=_feed_suffix,
                 describe="a feed (feed:URL, or a URL or file ending in .xml, .rss, .atom or .json)", order=20)
def open_feed(spec: str, settings: SourceSettings, ctx: SourceContext) -> FeedSource:
    url = spec[5:] if spec.lower().startswith("feed:") else spec
    if not url.lower().split("?")[0].endswith(".json"):  # JSON Feed is read without feedparser
        require("feedparser", "monitor", f"feed:{url}: reading RSS and Atom feeds")
    return FeedSource(url, settings, ctx)
