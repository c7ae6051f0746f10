"""Where the monitor's frames come from, behind one contract.

A source (``Source``) has a ``name`` (the command-line form it was opened from), ``items()`` (an
iterator of ``Frame``s to classify and typed control events: ``Done``, a folder file or a post
finished without a frame; ``Ended``, a video ended, so its sightings close), ``errors`` (one line
per item that failed, for the run's summary), ``finite`` (it ends by itself: a video file, a folder
or feed read ``once``) and ``close()``. Sources remember what they have done through the
``Progress`` store they are given (``SourceContext``), so a restarted monitor goes on where it
stopped.

Each kind of source is registered with ``@register_source`` under the prefixes or schemes that
name it (``feed:``, ``rtsp://``) or a test of the spec (a folder, a video file), and is opened by
``open_source(spec, settings, ...)`` with one ``SourceSettings`` built from the monitor's config.
A kind is added by one file: a module in this package that uses the decorator (the registry
imports every such module), or a module an installed package names in the ``wildwatch.sources``
entry-point group.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from wildwatch.errors import UsageError, WildwatchError
from wildwatch.plugins import Discovery

if TYPE_CHECKING:
    from wildwatch.field import Place

ENTRY_POINT_GROUP = "wildwatch.sources"
_MARKER = "@register_source"
_discovery = Discovery(__name__, _MARKER, ENTRY_POINT_GROUP)
DEFAULT_KEYWORDS = ("hunt", "trophy", "for sale", "ivory", "horn", "skin", "bushmeat", "poach")


class SourceSettings(BaseModel):
    """What every source may read of the monitor's settings (``MonitorConfig`` holds these fields;
    ``MonitorConfig.source_settings()`` builds this once per run)."""

    model_config = ConfigDict(extra="forbid")

    sample_every_s: float = Field(0.5, gt=0, description="seconds of video between classified frames")
    motion: float = Field(0.0, ge=0, description="> 0: only frames that changed this much (0-255) are classified")
    keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_KEYWORDS))
    folder_poll_s: float = Field(2.0, gt=0)
    feed_poll_s: float = Field(300.0, gt=0)
    once: bool = Field(False, description="folders and feeds: process what is there now, then stop")
    max_retries: int | None = Field(None, ge=0, description="live streams: reconnect attempts (None: forever)")
    allow_hosts: list[str] = Field(default_factory=list, description="feeds: hosts, addresses or networks "
                                   "(192.168.1.0/24) on a private network that posts may point at; by default "
                                   "only public addresses and the feed's own host are fetched from")
    fetch_deadline_s: float = Field(60.0, gt=0, description="feeds: the longest one fetch may take, in all")
    fetch_max_bytes: int = Field(50 << 20, gt=0, description="feeds: the largest feed or image fetched")
    host_interval_s: float = Field(1.0, ge=0, description="media watch: at most one request per this many seconds "
                                   "to a site")
    follow_links: bool = Field(False, description="page: sources: also read the pages a page links to on the same "
                               "site (one level)")


@dataclass(frozen=True)
class PostInfo:
    """The media post a frame (or a ``Done``) belongs to."""

    key: str  # unique: the source and the post's id
    title: str
    text: str  # the whole text (title and body), for its evidence
    link: str
    account: str = ""  # who posted it
    keywords: tuple[str, ...] = ()  # the monitor's keywords found in the text

    @property
    def priority(self) -> int:
        return len(self.keywords)


@dataclass
class Frame:
    """One image to classify, and where and when it came from."""

    source: str
    image: Image.Image
    stream_time_s: float | None  # position in the video; None for photos and posts
    frame_index: int | None
    wall_time: float = field(default_factory=time.time)  # when the frame was read
    single: bool = False  # a photo or a post: a sighting on its own, no k-of-n over time
    link: str = ""
    done_key: str | None = None  # marks a folder file or feed post finished once classified
    live: bool = False  # a live stream: time is wall-clock time
    place: Place | None = None  # a photo's EXIF GPS and time; ``wall_time`` is then its capture time
    camera: str = ""  # a photo's camera (folder, EXIF make, model, serial): its bursts are one sighting
    post: PostInfo | None = None  # a media post's frame; its last frame has the post's key as done_key

    @property
    def post_key(self) -> str | None:
        return self.post.key if self.post else None

    @property
    def priority(self) -> int:
        return self.post.priority if self.post else 0

    @property
    def keywords(self) -> tuple[str, ...]:
        return self.post.keywords if self.post else ()


@dataclass(frozen=True)
class Done:
    """``key`` is finished with no frame to classify: a folder photo that cannot be read, a post
    none of whose images could be fetched (with ``post``: it is still filed under its case)."""

    key: str
    source: str
    post: PostInfo | None = None


@dataclass(frozen=True)
class Ended:
    """The video ``source`` ended: its open sightings close (``done_key``: a folder's video file is
    finished)."""

    source: str
    done_key: str | None = None


Item = Frame | Done | Ended


class Progress(Protocol):
    def get(self, source: str) -> dict | None: ...

    def is_done(self, key: str) -> bool: ...


@dataclass
class SourceContext:
    """What the monitor hands every source: its progress store and the run's stop event."""

    progress: Progress | None = None
    stop: threading.Event = field(default_factory=threading.Event)


class Source(Protocol):
    name: str
    errors: list[str]
    finite: bool

    def items(self) -> Iterator[Item]: ...

    def close(self) -> None: ...


class BaseSource:
    """What most sources share: errors, a stop event, iteration over ``items()``, nothing to close."""

    finite = True

    def __init__(self, name: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None):
        self.name = name
        self.settings = settings or SourceSettings()
        self.ctx = ctx or SourceContext()
        self.stop = self.ctx.stop
        self.progress = self.ctx.progress
        self.errors: list[str] = []

    def items(self) -> Iterator[Item]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Item]:
        return self.items()

    def close(self) -> None:
        """Release what the source holds (connections, files); the run has ended."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- the registry

Opener = Callable[[str, SourceSettings, SourceContext], Source]


class DuplicateSourceError(WildwatchError, ValueError):
    """Two kinds of source registered under one name or prefix."""


@dataclass(frozen=True)
class SourceKind:
    name: str
    opener: Opener
    prefixes: tuple[str, ...] = ()  # lower case: "feed:", "rtsp://"
    claims: Callable[[str], bool] | None = None  # a spec without a prefix that it takes (a folder, x.mp4)
    describe: str = ""  # the form, for messages: "a folder", "page:URL"
    order: int = 100  # which is asked first (a feed URL ending in .xml before a stream URL)

    @property
    def origin(self) -> str:
        return f"{self.opener.__module__}.{self.opener.__qualname__}"

    def takes(self, spec: str) -> bool:
        if self.prefixes and spec.lower().startswith(self.prefixes):
            return True
        return self.claims is not None and self.claims(spec)


_KINDS: dict[str, SourceKind] = {}


def register_source(name: str, prefixes: tuple[str, ...] = (), claims: Callable[[str], bool] | None = None,
                    describe: str = "", order: int = 100):
    """Decorator: register a source class (or a function) ``opener(spec, settings, ctx) -> Source``
    for the specs that start with one of ``prefixes`` or that ``claims`` takes."""

    def wrap(opener: Opener) -> Opener:
        kind = SourceKind(name, opener, tuple(p.lower() for p in prefixes), claims, describe or name, order)
        for other in _KINDS.values():
            same_prefix = set(kind.prefixes) & set(other.prefixes)
            if other.origin != kind.origin and (other.name == name or same_prefix):
                what = f"name {name!r}" if other.name == name else f"prefix {min(same_prefix)!r}"
                raise DuplicateSourceError(f"source {what} is registered twice: by {other.origin} and by "
                                           f"{kind.origin}; rename one of them")
        _KINDS[name] = kind
        return opener

    return wrap


def source_kinds() -> list[SourceKind]:
    """The registered kinds, in the order they are asked."""
    _discovery.ensure()
    return sorted(_KINDS.values(), key=lambda k: (k.order, k.name))


def kind_of(spec: str) -> SourceKind:
    kind = next((k for k in source_kinds() if k.takes(spec)), None)
    if kind is None:
        # paths first (a folder, a video file), then the forms with a prefix
        listed = [k.describe for k in sorted(source_kinds(), key=lambda k: (bool(k.prefixes), k.order))]
        raise UsageError(f"{spec}: not {', '.join(listed[:-1])} or {listed[-1]}")
    return kind


def open_source(spec: str, settings: SourceSettings | None = None, progress: Progress | None = None,
                stop: threading.Event | None = None) -> Source:
    """The source a command-line string names (see ``source_kinds``)."""
    ctx = SourceContext(progress, stop or threading.Event())
    return kind_of(spec).opener(spec, settings or SourceSettings(), ctx)
