"""Media watch sources beside feeds: web pages, Mastodon, Reddit, Telegram channels, video
channel feeds. Each reads posts (text, link, account, image URLs) and hands them to the same
frame loop as feeds (``sources.FeedSource``), through the polite, guarded fetcher: robots.txt,
a per-host rate limit, ETag / If-Modified-Since, size caps and deadlines, no private addresses.

Command-line forms (``HOST`` may carry ``http://`` for a server on the local machine):

    page:URL | page:FILE.html     a page (a listing, a forum thread, one saved to disk with its images)
    mastodon:HOST/tags/TAG        a public hashtag timeline (Mastodon's REST API)
    mastodon:HOST/@ACCOUNT        an account's public posts
    reddit:r/SUB | reddit:HOST/r/SUB    a subreddit's newest posts (the public JSON listing)
    telegram:CHANNEL | telegram:HOST/s/CHANNEL    a public channel's page (t.me/s/)
    youtube:CHANNEL_ID            a video channel's feed (Atom, thumbnails as images)
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from wildwatch.errors import DataError, UsageError
from wildwatch.monitor.fetch import PoliteFetcher
from wildwatch.monitor.sources import SourceContext, SourceSettings, register_source
from wildwatch.monitor.sources.feeds import MAX_ITEMS, FeedSource, Post, feed_fetcher, item_error, open_feed
from wildwatch.monitor.textscan import join_unique, scan_html, strip_tags

MAX_TEXT = 4000
MAX_PAGE_BYTES = 2 << 20  # bytes of a page that are read for its post: past it, the rest is left with an error


def _base(spec: str, default_scheme: str = "https") -> str:
    return spec if "://" in spec else f"{default_scheme}://{spec}"


def strip_html(text: str) -> str:
    return strip_tags(text or "")


def decode_page(body: bytes, content_type: str = "", where: str = "", problems: list[str] | None = None) -> str:
    """A page's text: the charset its Content-Type or ``<meta charset>`` names, else UTF-8; bytes
    that are not valid in it (a page of mixed encodings) are replaced and reported once."""
    charset = ""
    low_ct = content_type.lower()
    if "charset=" in low_ct:
        charset = low_ct.split("charset=", 1)[1].split(";")[0].strip(" \"'")
    if not charset:
        head = body[:2048].decode("ascii", "replace").lower()
        k = head.find("charset=")
        if k >= 0:
            charset = head[k + 8:k + 40].strip(" \"'").split('"')[0].split("'")[0].split(">")[0].split(";")[0].strip()
    try:
        "".encode(charset or "utf-8")
    except LookupError:
        charset = ""
    try:
        return body.decode(charset or "utf-8")
    except UnicodeDecodeError as exc:
        if problems is not None:
            problems.append(f"{where}: not valid {charset or 'UTF-8'} at byte {exc.start:,} (mixed encodings?); "
                            "the bytes that are not were replaced")
        return body.decode(charset or "utf-8", "replace")


class PageSource(FeedSource):
    """A web page as one post (its text, its images and their alt text, ``og:image``), and with
    ``follow`` the pages it links to on the same site, one level deep (at most ``max_links``)."""

    max_links = 20

    def __init__(self, target: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None,
                 fetcher=None):
        super().__init__(target, settings, ctx, fetcher)
        self.follow = self.settings.follow_links
        self.local = "://" not in target
        if self.local and not Path(target).is_file():
            raise FileNotFoundError(f"{target}: saved page not found")

    def _fetch(self, url: str) -> tuple[bytes, str]:
        if self.local or not isinstance(self.fetcher, PoliteFetcher):
            return self.fetcher.fetch(url, allow_local=self.local), ""
        got = self.fetcher.fetch_full(url)
        return got.body, got.header("Content-Type")

    def _page(self, url: str) -> tuple[Post, list[str]]:
        body, ctype = self._fetch(url)
        if len(body) > MAX_PAGE_BYTES:
            self.errors.append(f"{url}: page of {len(body):,} bytes; only the first {MAX_PAGE_BYTES:,} are read")
            body = body[:MAX_PAGE_BYTES]
        p = scan_html(decode_page(body, ctype, url, self.errors))
        base = url if not self.local else str(Path(url).resolve())
        images = [m for m in (p.meta.get("og:image"),) if m] + [src for src, _ in p.images]
        join = (lambda u: str((Path(base).parent / u).resolve())) if self.local else (lambda u: urljoin(url, u))
        images = [join(u) for u in dict.fromkeys(images) if not u.startswith("data:")]
        title = " ".join(p.title.split())
        text = join_unique([title, p.meta.get("og:title", ""), p.meta.get("og:description", ""),
                            p.meta.get("description", ""), *(alt for _, alt in p.images), *p.text], MAX_TEXT)
        return Post(url, title, text, url if not self.local else "", images, p.meta.get("author", "")[:200]), \
            [join(h) for h in p.links]

    def posts(self) -> list[Post]:
        first, links = self._page(self.url)
        out = [first]
        if self.follow and not self.local:
            host = urlsplit(self.url).netloc
            same = [u for u in dict.fromkeys(links) if urlsplit(u).netloc == host and u != self.url
                    and urlsplit(u).scheme in ("http", "https")]
            for u in same[:self.max_links]:
                try:
                    out.append(self._page(u)[0])
                except (OSError, ValueError) as exc:
                    self.errors.append(f"{u}: {exc}")
        return out


def next_link(header: str) -> str | None:
    """The ``rel="next"`` URL of an HTTP Link header, read without a regular expression."""
    for part in header[:8192].split(","):
        if 'rel="next"' in part or "rel=next" in part:
            lt, gt = part.find("<"), part.find(">")
            if 0 <= lt < gt:
                return part[lt + 1:gt].strip()
    return None


class _Paged(FeedSource):
    """A JSON API read page by page, at most ``max_pages`` per poll (an endless listing ends there)."""

    max_pages = 3

    def _json(self, url: str):
        got = self.fetcher.fetch_full(url) if isinstance(self.fetcher, PoliteFetcher) else None
        body = got.body if got is not None else self.fetcher.fetch(url)
        try:
            return json.loads(body), got
        except ValueError as exc:
            raise DataError(f"{url}: not JSON ({exc})") from None

    def _items(self, url: str, items, model, limit: int = MAX_ITEMS) -> list:
        """Each item of a listing validated by ``model``; a bad one is an error row, the rest go on."""
        if not isinstance(items, list):
            raise DataError(f"{url}: expected a list of posts, got {type(items).__name__}")
        out = []
        for i, raw in enumerate(items[:limit]):
            try:
                out.append(model.model_validate(raw))
            except ValidationError as exc:
                self.errors.append(item_error(url, i, raw, exc))
        return out


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MastodonAccount(_Loose):
    acct: StrictStr = ""


class MastodonMedia(_Loose):
    type: StrictStr = ""
    url: StrictStr | None = None
    preview_url: StrictStr | None = None


class MastodonStatus(_Loose):
    """A status of Mastodon's REST API, typed: an account that is a list, a content that is a
    number, makes this status an error row."""

    id: StrictStr | StrictInt
    url: StrictStr | None = None
    uri: StrictStr | None = None
    content: StrictStr = ""
    account: MastodonAccount | None = None
    media_attachments: list[MastodonMedia] = Field(default_factory=list)
    reblog: MastodonStatus | None = None


class MastodonSource(_Paged):
    def __init__(self, spec: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None,
                 fetcher=None):
        base = _base(spec)
        u = urlsplit(base)
        root = f"{u.scheme}://{u.netloc}"
        path = u.path.strip("/")
        self.api: str | None
        self.account: str | None
        if path.startswith("tags/"):
            self.api = f"{root}/api/v1/timelines/tag/{path[5:]}?limit=40"
            self.account = None
        elif path.startswith("@"):
            self.api, self.account = None, path[1:]
        else:
            raise UsageError(f"mastodon:{spec}: give HOST/tags/TAG or HOST/@ACCOUNT")
        self.root = root
        super().__init__(base, settings, ctx, fetcher)

    def _start(self) -> str:
        if self.api is None:
            found, _ = self._json(f"{self.root}/api/v1/accounts/lookup?acct={self.account}")
            ident = found.get("id") if isinstance(found, dict) else None
            if not isinstance(ident, (str, int)):
                raise DataError(f"{self.root}: account lookup for {self.account!r} gave no id")
            self.api = f"{self.root}/api/v1/accounts/{ident}/statuses?limit=40"
        return self.api

    def posts(self) -> list[Post]:
        url, out = self._start(), []
        for _ in range(self.max_pages):
            items, got = self._json(url)
            for st in self._items(url, items, MastodonStatus):
                s = st.reblog or st
                imgs = [m.url or m.preview_url for m in s.media_attachments if m.type in ("image", "gifv")]
                out.append(Post(str(s.id), "", strip_html(s.content)[:MAX_TEXT], s.url or s.uri or "",
                                [i for i in imgs if i], s.account.acct if s.account else ""))
            nxt = next_link(got.header("Link")) if got is not None else None
            if not nxt or not items:
                break
            url = nxt
        return out


class _RedditImage(_Loose):
    source: dict = Field(default_factory=dict)


class _RedditPreview(_Loose):
    images: list[_RedditImage] = Field(default_factory=list)


class RedditPost(_Loose):
    """A post of Reddit's JSON listing, typed: an author that is a list makes it an error row."""

    id: StrictStr | StrictInt
    title: StrictStr = ""
    selftext: StrictStr = ""
    author: StrictStr = ""
    permalink: StrictStr = ""
    url: StrictStr | None = None
    url_overridden_by_dest: StrictStr | None = None
    preview: _RedditPreview | None = None


class _RedditChild(_Loose):
    data: RedditPost


class RedditSource(_Paged):
    def __init__(self, spec: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None,
                 fetcher=None):
        base = _base(f"www.reddit.com/{spec}" if spec.startswith("r/") else spec)
        u = urlsplit(base)
        sub = u.path.strip("/")
        if not sub.startswith("r/"):
            raise UsageError(f"reddit:{spec}: give r/SUBREDDIT")
        self.listing = f"{u.scheme}://{u.netloc}/{sub}/new.json?limit=50&raw_json=1"
        super().__init__(base, settings, ctx, fetcher)

    def posts(self) -> list[Post]:
        url, out = self.listing, []
        for _ in range(self.max_pages):
            doc, _ = self._json(url)
            data = doc.get("data") if isinstance(doc, dict) else None
            if not isinstance(data, dict):
                raise DataError(f"{url}: not a Reddit listing (no 'data' object)")
            for child in self._items(url, data.get("children", []), _RedditChild):
                d = child.data
                imgs = [html.unescape(str(i.source["url"])) for i in (d.preview.images if d.preview else [])
                        if isinstance(i.source.get("url"), str)]
                link = d.url_overridden_by_dest or d.url or ""
                if link.lower().endswith((".jpg", ".jpeg", ".png", ".webp", ".gif")):
                    imgs.insert(0, link)
                permalink = urljoin(self.listing, d.permalink) if d.permalink else link
                out.append(Post(str(d.id), d.title, join_unique([d.title, d.selftext], MAX_TEXT), permalink,
                                list(dict.fromkeys(imgs)), d.author))
            after = data.get("after")
            if not isinstance(after, str) or not after:
                break
            url = f"{self.listing}&after={after}"
        return out


def _between(s: str, start: str, end: str, at: int = 0) -> tuple[str, int]:
    """The text between the next ``start`` (from ``at``) and the ``end`` after it, and where it
    ended; ("", -1) when either is missing."""
    i = s.find(start, at)
    if i < 0:
        return "", -1
    j = s.find(end, i + len(start))
    if j < 0:
        return "", -1
    return s[i + len(start):j], j + len(end)


class TelegramSource(FeedSource):
    """A public channel's web preview (t.me/s/CHANNEL): each message's text and photos, read with
    ``str.find`` (linear in the page, whatever it holds)."""

    max_messages = 200
    max_block = 64 << 10

    def __init__(self, spec: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None,
                 fetcher=None):
        page = _base(spec) if "/" in spec else f"https://t.me/s/{spec}"
        self.channel = urlsplit(page).path.rstrip("/").rsplit("/", 1)[-1]
        super().__init__(page, settings, ctx, fetcher)

    def posts(self) -> list[Post]:
        body = self.fetcher.fetch(self.url)[:MAX_PAGE_BYTES]
        page = decode_page(body, "", self.url, self.errors)
        marker = '<div class="tgme_widget_message_wrap'
        starts: list[int] = []
        at = page.find(marker)
        while at >= 0 and len(starts) < self.max_messages:
            starts.append(at)
            at = page.find(marker, at + len(marker))
        out = []
        for k, s0 in enumerate(starts):
            block = page[s0:min(starts[k + 1] if k + 1 < len(starts) else len(page), s0 + self.max_block)]
            post_id, _ = _between(block, 'data-post="', '"')
            if not post_id:
                continue
            text = ""
            t = block.find('<div class="tgme_widget_message_text')
            if t >= 0:
                text, _ = _between(block, ">", "</div>", t)
            photos, at = [], 0
            while True:
                wrap = block.find("tgme_widget_message_photo_wrap", at)
                if wrap < 0:
                    break
                url, end = _between(block, "background-image:url('", "')", wrap)
                if end < 0:
                    break
                photos.append(url)
                at = end
            out.append(Post(post_id, "", strip_html(text)[:MAX_TEXT], urljoin(self.url, f"/{post_id}"), photos,
                            self.channel))
        return out


def youtube_feed(channel: str) -> str:
    return channel if "://" in channel else f"https://www.youtube.com/feeds/videos.xml?channel_id={channel}"


# ---------------------------------------------------------------- the command-line forms


def _polite(target: str, settings: SourceSettings) -> PoliteFetcher:
    """The guarded fetcher, with robots.txt, a per-host rate limit and conditional requests."""
    return PoliteFetcher(feed_fetcher(target, settings), min_interval_s=settings.host_interval_s)


@register_source("page", prefixes=("page:",), describe="page:URL", order=10)
def open_page(spec: str, settings: SourceSettings, ctx: SourceContext) -> PageSource:
    target = spec[5:]
    return PageSource(target, settings, ctx, _polite(target, settings))


@register_source("mastodon", prefixes=("mastodon:",), describe="mastodon:HOST/tags/TAG", order=11)
def open_mastodon(spec: str, settings: SourceSettings, ctx: SourceContext) -> MastodonSource:
    rest = spec[9:]
    return MastodonSource(rest, settings, ctx, _polite(_base(rest), settings))


@register_source("reddit", prefixes=("reddit:",), describe="reddit:r/SUB", order=12)
def open_reddit(spec: str, settings: SourceSettings, ctx: SourceContext) -> RedditSource:
    rest = spec[7:]
    target = _base(f"www.reddit.com/{rest}" if rest.startswith("r/") else rest)
    return RedditSource(rest, settings, ctx, _polite(target, settings))


@register_source("telegram", prefixes=("telegram:",), describe="telegram:CHANNEL", order=13)
def open_telegram(spec: str, settings: SourceSettings, ctx: SourceContext) -> TelegramSource:
    rest = spec[9:]
    target = _base(rest) if "/" in rest else f"https://t.me/s/{rest}"
    return TelegramSource(rest, settings, ctx, _polite(target, settings))


@register_source("youtube", prefixes=("youtube:",), describe="youtube:CHANNEL_ID", order=14)
def open_youtube(spec: str, settings: SourceSettings, ctx: SourceContext) -> FeedSource:
    return open_feed("feed:" + youtube_feed(spec[8:]), settings, ctx)
