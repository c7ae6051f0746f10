"""From per-frame predictions to sightings: k of n smoothing and a cooldown per species and source.

A sighting opens when one species is the confident answer (probability at least ``threshold``,
not unknown) in at least ``k`` of the last ``n`` samples of a source. It stays open while that
species keeps being seen, and closes once it has not been seen for ``cooldown_s`` (stream time
for files, wall time for live streams). Until then the same species at the same source is the
same sighting. Photos and feed posts are single samples: one confident answer is a sighting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from wildwatch.errors import UsageError

if TYPE_CHECKING:
    from wildwatch.field import Place


class Answer(Protocol):
    """What the monitor reads of a frame's answer (an ``inference.Prediction`` is one)."""

    species: str
    confidence: float
    unknown: bool
    error: str | None
    common_name: str
    iucn_status: str
    threatened: bool
    country: str | None
    latitude: float | None
    longitude: float | None
    looks_like_kind: str

    @property
    def named(self) -> bool:
        """Whether it names one species (not unknown, not uncertain between two, not failed)."""
        ...


@dataclass
class Sample:
    """One classified frame: what the tracker needs, and the answer and place it came with (a
    sighting that a sample opens is described by them)."""

    source: str
    clock: float  # seconds: stream time (files) or wall time (live)
    stream_time_s: float | None
    wall_time: float
    frame_index: int | None
    species: str  # "" when nothing confident (unknown, low confidence or failed)
    confidence: float
    image: Image.Image | None = None
    single: bool = False
    answer: Answer | None = None  # None for a sample restored from the database
    place: Place | None = None  # a photo's own EXIF position and country


@dataclass
class Track:
    """An open sighting."""

    source: str
    species: str
    first: Sample
    last_seen: Sample
    best: Sample
    sighting_id: int | None = None
    hits: int = 0
    snapshot_of: int | None = None  # id() of the sample whose photo the sighting stored

    @property
    def peak(self) -> float:
        return self.best.confidence


@dataclass
class Change:
    kind: str  # "open", "update" or "close"
    track: Track


class Tracker:
    def __init__(self, k: int = 2, n: int = 3, threshold: float = 0.6, cooldown_s: float = 30.0):
        if not 1 <= k <= n:
            raise UsageError(f"need 1 <= k <= n for k-of-n smoothing, got k={k}, n={n}")
        self.k, self.n, self.threshold, self.cooldown_s = k, n, threshold, cooldown_s
        self.windows: dict[str, deque] = {}
        self.open: dict[tuple[str, str], Track] = {}

    def label(self, species: str, confidence: float, unknown: bool) -> str:
        """The species this sample counts for, or "" (``unknown``: no species named, e.g. unknown or
        uncertain; people; low confidence)."""
        return species if species and not unknown and species != "unknown" and confidence >= self.threshold else ""

    def window_state(self, source: str) -> list[str]:
        return list(self.windows.get(source, ()))

    def restore(self, source: str, window: list[str], tracks: list[Track]) -> None:
        """State saved by an earlier run of the monitor (see ``Monitor``)."""
        self.windows[source] = deque(window[-self.n:], maxlen=self.n)
        for t in tracks:
            self.open[(t.source, t.species)] = t

    def update(self, s: Sample) -> list[Change]:
        changes: list[Change] = []
        if s.single:
            if s.species:
                t = Track(s.source, s.species, s, s, s, hits=1)
                changes += [Change("open", t), Change("close", t)]
            return changes
        win = self.windows.setdefault(s.source, deque(maxlen=self.n))
        win.append(s.species)
        if s.species:
            key = (s.source, s.species)
            known = self.open.get(key)
            if known is None and sum(1 for x in win if x == s.species) >= self.k:
                opened = Track(s.source, s.species, s, s, s, hits=1)
                self.open[key] = opened
                changes.append(Change("open", opened))
            elif known is not None:
                known.last_seen = s
                known.hits += 1
                if s.confidence > known.best.confidence:
                    known.best = s
                changes.append(Change("update", known))
        for key, t in list(self.open.items()):
            if key[0] == s.source and key[1] != s.species and s.clock - t.last_seen.clock >= self.cooldown_s:
                del self.open[key]
                changes.append(Change("close", t))
        return changes

    def close_source(self, source: str) -> list[Change]:
        """The source ended (end of a file): every open sighting of it closes."""
        out = []
        for key, t in list(self.open.items()):
            if key[0] == source:
                del self.open[key]
                out.append(Change("close", t))
        self.windows.pop(source, None)
        return out
