"""Camera-trap sequences: photos grouped into events by camera and time, and one answer per event.

A camera trap shoots bursts: three photos a second apart show the same animal, and a field team
counts one event, not three sightings. Photos belong to the same camera when they share a
folder and the camera's EXIF make, model and serial number; within a camera, a photo starts a
new event when more than ``gap_s`` seconds (default 60) passed since the previous one.

Times are the EXIF capture times (DateTimeOriginal, the camera's clock, compared as local
times). A photo without one falls back to its file modification time, and its event is flagged
(``time_from_file``): copying a card can reset those times.

The event's answer (``decide``): the species named by the most photos with a confidence of at
least ``CONFIDENT`` (ties: the larger summed confidence); with no confident photo, the same among
the photos that name a species at all, and the event is flagged ``unsure``; with no species
named, the most frequent of "unknown" (an animal of another species), "person" and "vehicle", in
that order of precedence; else "empty". A photo that names another species than its event is
flagged (``disagrees``), so that a person checks it.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from wildwatch.field import EXIF_IFD, taken_at

DEFAULT_GAP_S = 60.0
CONFIDENT = 0.5
MAKE, MODEL = 0x010F, 0x0110
BODY_SERIAL = 0xA431  # EXIF BodySerialNumber
KIND_ORDER = ("unknown", "person", "vehicle")  # what an event with no species named is, by precedence


@dataclass(frozen=True)
class PhotoFacts:
    """What the header says about a photo: size, camera and capture time (no pixels decoded)."""

    width: int = 0
    height: int = 0
    make: str = ""
    model: str = ""
    serial: str = ""
    taken_at: str | None = None  # EXIF DateTimeOriginal, ISO 8601 (with its offset when recorded)
    mtime: float = 0.0


def _tag(value) -> str:
    return str(value).strip("\x00 ")[:64] if value else ""


def photo_facts(path: str | Path) -> PhotoFacts:
    """Header-only facts of a photo; a file that cannot be opened gives what its file system says."""
    try:
        mtime = os.stat(path).st_mtime
    except OSError:
        return PhotoFacts()
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            w, h = img.size
            if exif.get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation turns the photo a quarter
                w, h = h, w
            ifd = exif.get_ifd(EXIF_IFD)
            return PhotoFacts(w, h, _tag(exif.get(MAKE)), _tag(exif.get(MODEL)), _tag(ifd.get(BODY_SERIAL)),
                              taken_at(exif), mtime)
    except (OSError, ValueError, SyntaxError, TypeError, Image.DecompressionBombError):
        # unreadable files are reported by the image loader, not here
        return PhotoFacts(mtime=mtime)


def camera_key(path: str | Path, facts: PhotoFacts) -> str:
    """One camera: the photo's folder and the camera's make, model and serial number."""
    return "|".join([str(Path(path).resolve().parent), facts.make, facts.model, facts.serial])


def capture_moment(facts: PhotoFacts) -> tuple[datetime, bool]:
    """(the time to order and gap photos by, as a naive local time; True when it came from the file)."""
    if facts.taken_at:
        t = datetime.fromisoformat(facts.taken_at)
        return t.replace(tzinfo=None), False
    return datetime.fromtimestamp(facts.mtime, timezone.utc).replace(tzinfo=None), True


@dataclass
class Event:
    """Photos of one camera taken less than the gap apart. ``members`` index the input list."""

    id: str
    camera: str
    start: datetime
    end: datetime
    members: list[int] = field(default_factory=list)
    time_from_file: bool = False
    label: str = "empty"  # a species key, "unknown", "person", "vehicle" or "empty"
    confidence: float | None = None  # mean confidence of the photos that named the event's species
    unsure: bool = False
    count: int = 0  # the most individuals of the event's label in one photo
    disagrees: set[int] = field(default_factory=set)  # members that named another species

    def frame(self, i: int) -> int:
        return self.members.index(i)


def group_events(cameras: Sequence[str], moments: Sequence[tuple[datetime, bool]],
                 gap_s: float = DEFAULT_GAP_S) -> list[Event]:
    """Events of the photos ``i`` with camera ``cameras[i]`` and time ``moments[i]``; every photo is
    in exactly one event, events are in order of camera then time."""
    by_camera: dict[str, list[int]] = {}
    for i, cam in enumerate(cameras):
        by_camera.setdefault(cam, []).append(i)
    events: list[Event] = []
    for cam in sorted(by_camera):
        order = sorted(by_camera[cam], key=lambda i: (moments[i][0], i))
        current: Event | None = None
        for i in order:
            t, from_file = moments[i]
            if current is None or (t - current.end).total_seconds() > gap_s:
                current = Event(_event_id(cam, t), cam, t, t)
                events.append(current)
            current.members.append(i)
            current.end = max(current.end, t)
            current.time_from_file |= from_file
    return events


def _event_id(camera: str, start: datetime) -> str:
    return "event-" + hashlib.sha256(f"{camera}|{start.isoformat()}".encode()).hexdigest()[:12]


@dataclass(frozen=True)
class PhotoAnswer:
    """What one photo says, as events need it: its label (species key, "unknown", "person",
    "vehicle" or "empty"), whether that label is a named species, its confidence, and how many
    individuals of each label it shows."""

    label: str
    named: bool
    confidence: float = 0.0
    counts: dict = field(default_factory=dict)


def decide(event: Event, answers: Sequence[PhotoAnswer]) -> Event:
    """Fill ``label``, ``confidence``, ``unsure``, ``count`` and ``disagrees`` of ``event`` from the
    answers of all photos (indexed like the input list); see the module's rule."""
    own = [(i, answers[i]) for i in event.members]
    named = [(i, a) for i, a in own if a.named]
    confident = [(i, a) for i, a in named if a.confidence >= CONFIDENT]
    pool = confident or named
    if pool:
        votes = Counter(a.label for _, a in pool)
        weight: dict[str, float] = {}
        for _, a in pool:
            weight[a.label] = weight.get(a.label, 0.0) + a.confidence
        event.label = max(votes, key=lambda k: (votes[k], weight[k], k))
        sure = [a.confidence for _, a in pool if a.label == event.label]
        event.confidence = round(sum(sure) / len(sure), 4)
        event.unsure = not confident
        event.disagrees = {i for i, a in named if a.label != event.label}
    else:
        kinds = Counter(a.label for _, a in own if a.label in KIND_ORDER)
        event.label = max(kinds, key=lambda k: (kinds[k], -KIND_ORDER.index(k))) if kinds else "empty"
    if event.label != "empty":
        event.count = max((a.counts.get(event.label, 1 if a.label == event.label else 0) for _, a in own), default=0)
    return event
