"""Watch-folders of photos and videos (for instance camera-trap cards being copied)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from wildwatch.data.discover import IMAGE_EXTENSIONS
from wildwatch.monitor.sources import (
    BaseSource,
    Done,
    Ended,
    Frame,
    Item,
    SourceContext,
    SourceSettings,
    register_source,
)
from wildwatch.monitor.sources.video import VIDEO_EXTENSIONS, VideoSource

log = logging.getLogger("wildwatch.monitor")


@register_source("folder", claims=lambda spec: "://" not in spec and Path(spec).is_dir(), describe="a folder",
                 order=40)
class FolderSource(BaseSource):
    """The photos and videos that appear in a folder. A file is taken once its size has stopped
    changing for ``settle_s``; each file is done once, across restarts. ``once``: process what is
    there and stop."""

    def __init__(self, folder: str | Path, settings: SourceSettings | None = None, ctx: SourceContext | None = None,
                 settle_s: float = 1.0):
        super().__init__(str(folder), settings, ctx)
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{folder}: watch-folder not found")
        self.poll_s, self.settle_s, self.once = self.settings.folder_poll_s, settle_s, self.settings.once
        self.finite = self.once

    def _candidates(self) -> list[Path]:
        return sorted(p for p in self.folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                      and p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)

    def items(self) -> Iterator[Item]:
        sizes: dict[Path, tuple[int, float]] = {}
        while not self.stop.is_set():
            now = time.time()
            for p in self._candidates():
                key = f"file:{p.resolve()}"
                if (self.progress is not None and self.progress.is_done(key)) or not self._settled(p, sizes, now):
                    continue
                yield from self._video(p, key) if p.suffix.lower() in VIDEO_EXTENSIONS else self._photo(p, key)
                if self.stop.is_set():
                    return
            if self.once:
                return
            self.stop.wait(self.poll_s)

    def _settled(self, p: Path, sizes: dict, now: float) -> bool:
        """Whether the file has stopped growing (always, with ``once``)."""
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return False
        if self.once:
            return True
        seen = sizes.get(p)
        if seen is None or seen[0] != size:
            sizes[p] = (size, now)
            return False
        return now - seen[1] >= self.settle_s

    def _video(self, p: Path, key: str) -> Iterator[Item]:
        """A video file's frames, and its end (its sightings close, the file is done)."""
        try:
            yield from VideoSource(str(p), self.settings, self.ctx, done_key=key).items()
            return
        except RuntimeError as exc:
            log.error("%s", exc)
            self.errors.append(str(exc))
        if not self.stop.is_set():
            yield Ended(str(p), key)  # a broken video is done too: it is not read again

    def _photo(self, p: Path, key: str) -> Iterator[Item]:
        from wildwatch.data.loading import ImageLoadError, load_photo

        try:
            img, exif = load_photo(p)
        except ImageLoadError as exc:
            log.error("%s", exc)
            self.errors.append(str(exc))
            yield Done(key, key)
            return
        yield photo_frame(p, img, exif, key)


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
