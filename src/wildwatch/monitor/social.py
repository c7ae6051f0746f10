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
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from wildwatch.errors import DataError, UsageError
from wildwatch.monitor.fetch import PoliteFetcher
from wildwatch.monitor.sources import FeedSource, Post

MAX_TEXT = 4000


def _base(spec: str, default_scheme: str = "https") -> str:
    return spec if "://" in spec else f"{default_scheme}://{spec}"


def strip_html(text: str) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text or ""))).strip()


class _PageParser(HTMLParser):
    """Title, og: metadata, images (with alt text), paragraph text and links of an HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.title, self.meta, self.images, self.links, self.text = "", {}, [], [], []
        self._in_title = False
        self._skip = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag in ("script", "style", "noscript"):
            self._skip += 1
        elif tag == "meta" and (a.get("property") or a.get("name")):
            self.meta[(a.get("property") or a.get("name")).lower()] = a.get("content") or ""
        elif tag == "img" and a.get("src"):
            self.images.append(a["src"])
            if a.get("alt"):
                self.text.append(a["alt"])
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in ("script", "style", "noscript"):
            self._skip = max(0, self._skip - 1)

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip and data.strip():
            self.text.append(data.strip())


class PageSource(FeedSource):
    """A web page as one post (its text, its images and their alt text, ``og:image``), and with
    ``follow`` the pages it links to on the same site, one level deep (at most ``max_links``)."""

    max_links = 20

    def __init__(self, target: str, follow: bool = False, **kw):
        super().__init__(target, **kw)
        self.follow = follow
        self.local = "://" not in target
        if self.local and not Path(target).is_file():
            raise FileNotFoundError(f"{target}: saved page not found")

    def _page(self, url: str) -> tuple[Post, list[str]]:
        body = self.fetcher.fetch(url, allow_local=self.local)
        p = _PageParser()
        p.feed(body.decode("utf-8", "replace"))
        base = url if not self.local else str(Path(url).resolve())
        images = [m for m in (p.meta.get("og:image"),) if m] + p.images
        join = (lambda u: str((Path(base).parent / u).resolve())) if self.local else (lambda u: urljoin(url, u))
        images = [join(u) for u in dict.fromkeys(images) if not u.startswith("data:")]
        text = " ".join([p.title.strip(), p.meta.get("og:title", ""), p.meta.get("og:description", ""),
                         p.meta.get("description", ""), *p.text])[:MAX_TEXT]
        return Post(url, p.title.strip(), text, url if not self.local else "", images, p.meta.get("author", "")), \
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


class MastodonSource(_Paged):
    def __init__(self, spec: str, **kw):
        base = _base(spec)
        u = urlsplit(base)
        root = f"{u.scheme}://{u.netloc}"
        path = u.path.strip("/")
        if path.startswith("tags/"):
            self.api = f"{root}/api/v1/timelines/tag/{path[5:]}?limit=40"
            self.account = None
        elif path.startswith("@"):
            self.api, self.account = None, path[1:]
        else:
            raise UsageError(f"mastodon:{spec}: give HOST/tags/TAG or HOST/@ACCOUNT")
        self.root = root
        super().__init__(base, **kw)

    def _start(self) -> str:
        if self.api is None:
            found, _ = self._json(f"{self.root}/api/v1/accounts/lookup?acct={self.account}")
            self.api = f"{self.root}/api/v1/accounts/{found['id']}/statuses?limit=40"
        return self.api

    def posts(self) -> list[Post]:
        url, out = self._start(), []
        for _ in range(self.max_pages):
            items, got = self._json(url)
            for s in items if isinstance(items, list) else []:
                s = s.get("reblog") or s
                imgs = [m.get("url") or m.get("preview_url") for m in s.get("media_attachments", [])
                        if m.get("type") in ("image", "gifv")]
                out.append(Post(str(s.get("id")), "", strip_html(s.get("content", ""))[:MAX_TEXT],
                                s.get("url") or s.get("uri") or "", [i for i in imgs if i],
                                (s.get("account") or {}).get("acct", "")))
            nxt = re.search(r'<([^>]+)>;\s*rel="next"', got.header("Link")) if got is not None else None
            if not nxt or not items:
                break
            url = nxt.group(1)
        return out


class RedditSource(_Paged):
    def __init__(self, spec: str, **kw):
        base = _base(f"www.reddit.com/{spec}" if spec.startswith("r/") else spec)
        u = urlsplit(base)
        sub = u.path.strip("/")
        if not sub.startswith("r/"):
            raise UsageError(f"reddit:{spec}: give r/SUBREDDIT")
        self.listing = f"{u.scheme}://{u.netloc}/{sub}/new.json?limit=50&raw_json=1"
        super().__init__(base, **kw)

    def posts(self) -> list[Post]:
        url, out = self.listing, []
        for _ in range(self.max_pages):
            doc, _ = self._json(url)
            data = (doc or {}).get("data", {})
            for child in data.get("children", []):
                d = child.get("data", {})
                imgs = [html.unescape(i["source"]["url"]) for i in (d.get("preview") or {}).get("images", [])
                        if i.get("source", {}).get("url")]
                link = d.get("url_overridden_by_dest") or d.get("url") or ""
                if re.search(r"\.(jpe?g|png|webp|gif)$", link.lower()):
                    imgs.insert(0, link)
                permalink = urljoin(self.listing, d.get("permalink", "")) if d.get("permalink") else link
                out.append(Post(str(d.get("id")), d.get("title", ""),
                                f"{d.get('title', '')} {d.get('selftext', '')}"[:MAX_TEXT], permalink,
                                list(dict.fromkeys(imgs)), d.get("author", "")))
            after = data.get("after")
            if not after:
                break
            url = f"{self.listing}&after={after}"
        return out


class TelegramSource(FeedSource):
    """A public channel's web preview (t.me/s/CHANNEL): each message's text and photos."""

    def __init__(self, spec: str, **kw):
        page = _base(spec) if "/" in spec else f"https://t.me/s/{spec}"
        self.channel = urlsplit(page).path.rstrip("/").rsplit("/", 1)[-1]
        super().__init__(page, **kw)

    def posts(self) -> list[Post]:
        page = self.fetcher.fetch(self.url).decode("utf-8", "replace")
        out = []
        for block in re.split(r'(?=<div class="tgme_widget_message_wrap)', page)[1:]:
            post_id = re.search(r'data-post="([^"]+)"', block)
            if not post_id:
                continue
            text = re.search(r'<div class="tgme_widget_message_text[^"]*"[^>]*>(.*?)</div>', block, re.S)
            photos = re.findall(r"tgme_widget_message_photo_wrap[^>]*background-image:url\('([^']+)'\)", block)
            out.append(Post(post_id.group(1), "", strip_html(text.group(1) if text else "")[:MAX_TEXT],
                            urljoin(self.url, f"/{post_id.group(1)}"), photos, self.channel))
        return out


def youtube_feed(channel: str) -> str:
    return channel if "://" in channel else f"https://www.youtube.com/feeds/videos.xml?channel_id={channel}"
