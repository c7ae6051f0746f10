"""Where frames come from: video files and live streams (PyAV, i.e. ffmpeg), watch-folders of
photos and videos, and media feeds (RSS, Atom, JSON Feed).

Every source is an iterator of ``Frame``. Sources remember what they have done through a
``Progress`` store (SQLite), so a restarted monitor goes on where it stopped: a video resumes
after the last frame that was classified, a folder skips files it finished, a feed skips posts
it has seen.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from wildwatch.data.discover import IMAGE_EXTENSIONS
from wildwatch.errors import DataError, UsageError, require
from wildwatch.monitor.fetch import Fetcher
from wildwatch.monitor.textscan import Budget, BudgetExceeded, img_sources, join_unique, strip_tags

log = logging.getLogger("wildwatch.monitor")

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_KEYWORDS = ("hunt", "trophy", "for sale", "ivory", "horn", "skin", "bushmeat", "poach")


@dataclass
class Frame:
    """One image to classify, and where and when it came from."""

    source: str
    image: Image.Image
    stream_time_s: float | None  # position in the video; None for photos and posts
    frame_index: int | None
    wall_time: float = field(default_factory=time.time)  # when the frame was read
    single: bool = False  # a photo or a post: a sighting on its own, no k-of-n over time
    priority: int = 0  # feeds: keyword hits in the post
    text: str = ""
    link: str = ""
    keywords: tuple[str, ...] = ()
    done_key: str | None = None  # marks a folder file or feed post finished once classified
    post_key: str | None = None  # a media post's frames share it; its last frame has it as done_key too
    post_text: str = ""  # the post's whole text (title and body), for its evidence
    account: str = ""  # who posted it
    skip: bool = False  # nothing to classify: only marks ``done_key`` finished
    ends_source: bool = False  # the video ``source`` has ended: its open sightings close
    live: bool = False  # a live stream: time is wall-clock time
    place: object = None  # a photo's EXIF GPS and time (field.Place); ``wall_time`` is then its capture time
    camera: str = ""  # a photo's camera (folder, EXIF make, model, serial): its bursts are one sighting


class Progress(Protocol):
    def get(self, source: str) -> dict | None: ...

    def is_done(self, key: str) -> bool: ...


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def is_stream(uri: str) -> bool:
    return uri.lower().startswith(STREAM_SCHEMES)


class VideoSource:
    """Frames of a video file or live stream, sampled every ``every_s`` seconds (of stream time for
    a file, of wall-clock time for a live stream, whose timestamps may be missing or restart).

    With ``motion`` > 0, a sampled frame is only passed on if its 32x32 grey thumbnail differs
    from the last one passed by more than ``motion`` (mean absolute difference, 0-255), or if
    ``max_gap_s`` has passed: still scenes cost nothing. A live stream that drops or ends is
    reopened with exponential backoff (``retry_s`` up to ``max_retry_s``) and the gap is logged;
    a file ends at its end.
    """

    def __init__(self, uri: str, every_s: float = 0.5, motion: float = 0.0, max_gap_s: float = 10.0,
                 live: bool | None = None, retry_s: float = 0.5, max_retry_s: float = 30.0,
                 max_retries: int | None = None, progress: Progress | None = None,
                 stop: threading.Event | None = None, open_timeout_s: float = 10.0):
        self.uri = uri
        self.every_s, self.motion, self.max_gap_s = every_s, motion, max_gap_s
        self.live = is_stream(uri) if live is None else live
        self.retry_s, self.max_retry_s, self.max_retries = retry_s, max_retry_s, max_retries
        self.stop = stop or threading.Event()
        self.open_timeout_s = open_timeout_s
        state = progress.get(uri) if progress is not None else None
        self.resume_after = state.get("stream_time_s") if state and not self.live else None
        self.frames_decoded = 0
        self.reconnects = 0
        self.gaps: list[tuple[float, float]] = []

    def _open(self):
        av = require("av", "monitor", "reading video files and streams")

        opts = {}
        if self.live:
            opts = {"rw_timeout": str(int(self.open_timeout_s * 1e6))}
            if self.uri.lower().startswith("rtsp"):
                opts["rtsp_transport"] = "tcp"
        if not self.live and not Path(self.uri).is_file():
            raise FileNotFoundError(f"{self.uri}: video file not found")
        return av.open(self.uri, options=opts, timeout=self.open_timeout_s)

    def __iter__(self) -> Iterator[Frame]:
        failures = 0
        next_t: float | None = None
        last_thumb: np.ndarray | None = None
        last_pass = -1e18
        offset = 0.0  # stream time carried over reconnects (live streams restart their clock)
        while not self.stop.is_set():
            lost_at = time.time()
            try:
                container = self._open()
            except Exception as exc:  # noqa: BLE001 - any open failure of a live source is retried
                if not self.live:
                    raise RuntimeError(f"{self.uri}: cannot open video: {exc}") from exc
                failures += 1
                if self.max_retries is not None and failures > self.max_retries:
                    raise RuntimeError(f"{self.uri}: gave up after {failures - 1} failed reconnects ({exc})") from exc
                wait = min(self.max_retry_s, self.retry_s * 2 ** (failures - 1))
                log.warning("%s: cannot open (%s); retry in %.1f s", self.uri, exc, wait)
                self.stop.wait(wait)
                continue
            if failures:
                self.gaps.append((lost_at, time.time()))
                self.reconnects += 1
                log.warning("%s: reconnected after %d tries", self.uri, failures)
            failures = 0
            start_t = None
            try:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    if self.stop.is_set():
                        break
                    self.frames_decoded += 1
                    if self.live:  # live: seconds of wall-clock time since the first connection
                        start_t = time.time() if start_t is None else start_t
                        t = offset + (time.time() - start_t)
                    else:
                        t = float(frame.time) if frame.time is not None else self.frames_decoded / float(
                            stream.average_rate or 25)
                    if next_t is None:
                        next_t = t
                    if t + 1e-6 < next_t:
                        continue
                    next_t = max(next_t + self.every_s, t)
                    if self.resume_after is not None and t <= self.resume_after + 1e-6:
                        continue
                    img = frame.to_image()
                    if self.motion > 0:
                        thumb = np.asarray(img.convert("L").resize((32, 32), Image.BILINEAR), np.float32)
                        moved = last_thumb is None or np.abs(thumb - last_thumb).mean() > self.motion
                        if not moved and t - last_pass < self.max_gap_s:
                            continue
                        last_thumb = thumb
                    last_pass = t
                    yield Frame(self.uri, img, t, self.frames_decoded - 1, live=self.live)
            except Exception as exc:  # noqa: BLE001 - a broken stream is reopened; a broken file is reported
                if not self.live:
                    raise RuntimeError(f"{self.uri}: video stopped decoding: {exc}") from exc
                log.warning("%s: stream error (%s)", self.uri, exc)
            finally:
                container.close()
            if not self.live:
                return
            offset = next_t or 0.0
            failures = 1
            log.warning("%s: stream ended or dropped; reopening", self.uri)
            self.stop.wait(self.retry_s)


class FolderSource:
    """A watch-folder: photos and videos that appear in it (for instance camera-trap cards being
    copied). A file is taken once its size has stopped changing for ``settle_s``; each file is
    done once, across restarts. ``once``: process what is there and stop."""

    def __init__(self, folder: str | Path, poll_s: float = 2.0, settle_s: float = 1.0, once: bool = False,
                 progress: Progress | None = None, stop: threading.Event | None = None,
                 video: Callable[[str], VideoSource] | None = None):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{folder}: watch-folder not found")
        self.poll_s, self.settle_s, self.once = poll_s, settle_s, once
        self.progress = progress
        self.stop = stop or threading.Event()
        self.video = video or (lambda p: VideoSource(p, progress=progress, stop=self.stop))
        self.errors: list[str] = []

    def _candidates(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                      and p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)

    def __iter__(self) -> Iterator[Frame]:
        from wildwatch.data.loading import ImageLoadError, load_photo

        sizes: dict[Path, tuple[int, float]] = {}
        while not self.stop.is_set():
            now = time.time()
            for p in self._candidates():
                key = f"file:{p.resolve()}"
                if self.progress is not None and self.progress.is_done(key):
                    continue
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                seen = sizes.get(p)
                if not self.once and (seen is None or seen[0] != st.st_size):
                    sizes[p] = (st.st_size, now)
                    continue
                if not self.once and now - seen[1] < self.settle_s:
                    continue
                if p.suffix.lower() in VIDEO_EXTENSIONS:
                    try:
                        yield from self.video(str(p))
                    except RuntimeError as exc:
                        log.error("%s", exc)
                        self.errors.append(str(exc))
                    if self.stop.is_set():
                        return
                    yield from self._mark_done(key, str(p), video=True)
                    continue
                try:
                    img, exif = load_photo(p)
                except ImageLoadError as exc:
                    log.error("%s", exc)
                    self.errors.append(str(exc))
                    yield from self._mark_done(key)
                    continue
                yield photo_frame(p, img, exif, key)
            if self.once:
                return
            self.stop.wait(self.poll_s)

    def _mark_done(self, key: str, source: str | None = None, video: bool = False) -> Iterator[Frame]:
        """A file is finished (an empty frame tells the monitor so; for a video, its sightings close)."""
        yield Frame(source or key, Image.new("RGB", (1, 1)), None, None, single=not video, done_key=key, skip=True,
                    ends_source=video)


def photo_frame(path: Path, img: Image.Image, exif, key: str) -> Frame:
    """A camera-trap photo as a frame: its capture time from EXIF (an offset when it has one, else
    read as UTC; the file's time without one), its GPS position, and its camera."""
    from wildwatch.field import place_from_exif
    from wildwatch.inference.sequences import PhotoFacts, camera_key

    place = place_from_exif(exif)
    when = None
    if place.taken_at:
        t = datetime.fromisoformat(place.taken_at)
        when = (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()
    ifd = exif.get_ifd(0x8769) if exif else {}
    facts = PhotoFacts(make=str(exif.get(0x010F, "")).strip("\x00 ")[:64] if exif else "",
                       model=str(exif.get(0x0110, "")).strip("\x00 ")[:64] if exif else "",
                       serial=str(ifd.get(0xA431, "")).strip("\x00 ")[:64])
    return Frame(str(path), img, None, None, wall_time=when if when is not None else path.stat().st_mtime,
                 single=True, done_key=key, place=place, camera=camera_key(path, facts))


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


class FeedSource:
    """Posts of a feed (URL or file), polled every ``poll_s``; each image of a new post is a frame
    whose priority is the number of keywords in the post."""

    def __init__(self, url: str, poll_s: float = 300.0, keywords: tuple[str, ...] = DEFAULT_KEYWORDS,
                 once: bool = False, progress: Progress | None = None, stop: threading.Event | None = None,
                 fetcher: Fetcher | None = None, allow_hosts: tuple[str, ...] = ()):
        self.url, self.poll_s, self.keywords, self.once = url, poll_s, tuple(keywords), once
        self.progress = progress
        self.stop = stop or threading.Event()
        self.errors: list[str] = []
        # the feed's own origin is the user's choice; what its posts point at is checked (monitor.fetch)
        self.fetcher = fetcher or Fetcher(allow_hosts=allow_hosts, trusted=(url,))

    max_images = 20  # per post: a page of a hundred thumbnails is not a hundred photos to classify

    item_budget_s = ITEM_BUDGET_S

    def posts(self) -> list[Post]:
        """The posts there now (a subclass reads a page, an API, a channel instead of a feed); items
        that cannot be read go to ``errors``, one row each."""
        return parse_feed(self.fetcher.fetch(self.url, allow_local=True), self.url, self.errors)

    def fetch_image(self, url: str) -> bytes:
        return self.fetcher.fetch(url, allow_local="://" not in self.url)

    def __iter__(self) -> Iterator[Frame]:
        from wildwatch.data.loading import ImageLoadError, load_image_bytes

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
                if self.progress is not None and self.progress.is_done(key):
                    continue
                hits = keyword_hits(post.text, self.keywords)
                post.images = post.images[:self.max_images]
                budget = Budget(self.item_budget_s, f"{self.url} post {post.id[:80]}")
                got: list[tuple[str, Image.Image]] = []  # (url, image) of each image that loaded
                for n, u in enumerate(post.images):
                    try:
                        budget.check()
                        got.append((u, load_image_bytes(self.fetch_image(u), u)))
                    except BudgetExceeded as exc:  # one slow post does not hold up this source's others
                        self.errors.append(f"{exc} ({len(post.images) - n} of its images not fetched)")
                        break
                    except (OSError, ValueError, ImageLoadError) as exc:
                        log.warning("%s: image %s skipped (%s)", self.url, u, exc)
                        self.errors.append(f"{u}: {exc}")
                if not got:
                    yield Frame(key, Image.new("RGB", (1, 1)), None, None, single=True, done_key=key, skip=True,
                                text=post.title, link=post.link, keywords=hits, post_key=key, post_text=post.text,
                                account=post.account)
                    continue
                for i, (u, img) in enumerate(got):
                    yield Frame(f"{self.url}#{post.id}", img, None, i, single=True, priority=len(hits),
                                text=post.title, link=post.link or u, keywords=hits,
                                done_key=key if i == len(got) - 1 else None, post_key=key, post_text=post.text,
                                account=post.account)
            if self.once:
                return
            self.stop.wait(min(self.poll_s * 2 ** min(failures, 4), 3600) if failures else self.poll_s)


SOCIAL_PREFIXES = ("page:", "mastodon:", "reddit:", "telegram:", "youtube:")


def _social_source(spec: str, kw: dict, progress, stop):
    """The media watch's sources (monitor.social), each with a polite, guarded fetcher."""
    if not spec.startswith(SOCIAL_PREFIXES):
        return None
    from wildwatch.monitor import social
    from wildwatch.monitor.fetch import PoliteFetcher

    kind, _, rest = spec.partition(":")
    if kind == "youtube":
        return open_source("feed:" + social.youtube_feed(rest), **kw)
    target = rest if kind == "page" else social._base(rest if kind != "reddit" or not rest.startswith("r/")
                                                       else f"www.reddit.com/{rest}")
    if kind == "telegram" and "/" not in rest:
        target = f"https://t.me/s/{rest}"
    fetcher = PoliteFetcher(Fetcher(allow_hosts=kw.get("allow_hosts", ()), trusted=(target,),
                                    deadline_s=kw.get("fetch_deadline_s", 60.0),
                                    max_bytes=kw.get("fetch_max_bytes", 50 << 20)),
                            min_interval_s=kw.get("host_interval_s", 1.0))
    common = dict(poll_s=kw.get("feed_poll_s", 300.0), keywords=kw.get("keywords", DEFAULT_KEYWORDS),
                  once=kw.get("once", False), progress=progress, stop=stop, fetcher=fetcher)
    if kind == "page":
        return social.PageSource(rest, follow=kw.get("follow_links", False), **common)
    return {"mastodon": social.MastodonSource, "reddit": social.RedditSource,
            "telegram": social.TelegramSource}[kind](rest, **common)


def open_source(spec: str, **kw) -> VideoSource | FolderSource | FeedSource:
    """A source from a command-line string: a folder, a video file, a feed (``feed:URL`` or a URL
    or file ending in .xml/.rss/.atom/.json), or a stream URL."""
    progress, stop = kw.get("progress"), kw.get("stop")
    social = _social_source(spec, kw, progress, stop)
    if social is not None:
        return social
    if spec.startswith("feed:"):
        if not spec.lower().split("?")[0].endswith(".json"):  # JSON Feed is read without feedparser
            require("feedparser", "monitor", f"{spec}: reading RSS and Atom feeds")
        fetcher = Fetcher(allow_hosts=kw.get("allow_hosts", ()), trusted=(spec[5:],),
                          deadline_s=kw.get("fetch_deadline_s", 60.0), max_bytes=kw.get("fetch_max_bytes", 50 << 20))
        return FeedSource(spec[5:], poll_s=kw.get("feed_poll_s", 300.0), keywords=kw.get("keywords", DEFAULT_KEYWORDS),
                          once=kw.get("once", False), progress=progress, stop=stop, fetcher=fetcher)
    low = spec.lower().split("?")[0]
    if low.endswith((".xml", ".rss", ".atom", ".json")):
        return open_source("feed:" + spec, **kw)
    video = lambda p: VideoSource(p, every_s=kw.get("every_s", 0.5), motion=kw.get("motion", 0.0),  # noqa: E731
                                  progress=progress, stop=stop)
    if is_stream(spec):
        require("av", "monitor", f"{spec}: reading video streams")
        return VideoSource(spec, every_s=kw.get("every_s", 0.5), motion=kw.get("motion", 0.0), live=True,
                           max_retries=kw.get("max_retries"), progress=progress, stop=stop)
    p = Path(spec)
    if p.is_dir():
        return FolderSource(p, poll_s=kw.get("poll_s", 2.0), once=kw.get("once", False), progress=progress, stop=stop,
                            video=video)
    if p.suffix.lower() in VIDEO_EXTENSIONS:
        if not p.is_file():
            raise FileNotFoundError(f"{spec}: video file not found")
        require("av", "monitor", f"{spec}: reading video files")
        return video(spec)
    raise UsageError(f"{spec}: not a folder, a video file ({', '.join(sorted(VIDEO_EXTENSIONS))}), "
                     "a stream URL or a feed")
