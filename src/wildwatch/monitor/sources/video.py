"""Video files and live streams (PyAV, i.e. ffmpeg)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from wildwatch.errors import require
from wildwatch.monitor.sources import BaseSource, Ended, Frame, Item, SourceContext, SourceSettings, register_source

log = logging.getLogger("wildwatch.monitor")

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mpg", ".mpeg", ".ts"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")


def is_stream(uri: str) -> bool:
    return uri.lower().startswith(STREAM_SCHEMES)


class _Sampler:
    """Which decoded frames are passed on: one every ``every_s`` seconds, after ``resume_after``,
    and with ``motion`` > 0 only those that changed (or after ``max_gap_s``)."""

    def __init__(self, every_s: float, motion: float, max_gap_s: float, resume_after: float | None):
        self.every_s, self.motion, self.max_gap_s, self.resume_after = every_s, motion, max_gap_s, resume_after
        self.next_t: float | None = None
        self.last_thumb: np.ndarray | None = None
        self.last_pass = -1e18

    def due(self, t: float) -> bool:
        if self.next_t is None:
            self.next_t = t
        if t + 1e-6 < self.next_t:
            return False
        self.next_t = max(self.next_t + self.every_s, t)
        return self.resume_after is None or t > self.resume_after + 1e-6

    def moved(self, img: Image.Image, t: float) -> bool:
        if self.motion > 0:
            thumb = np.asarray(img.convert("L").resize((32, 32), Image.Resampling.BILINEAR), np.float32)
            moved = self.last_thumb is None or np.abs(thumb - self.last_thumb).mean() > self.motion
            if not moved and t - self.last_pass < self.max_gap_s:
                return False
            self.last_thumb = thumb
        self.last_pass = t
        return True


class VideoSource(BaseSource):
    """Frames of a video file or live stream, sampled every ``sample_every_s`` seconds (of stream
    time for a file, of wall-clock time for a live stream, whose timestamps may be missing or restart).

    With ``motion`` > 0, a sampled frame is only passed on if its 32x32 grey thumbnail differs
    from the last one passed by more than ``motion`` (mean absolute difference, 0-255), or if
    ``max_gap_s`` has passed: still scenes cost nothing. A live stream that drops or ends is
    reopened with exponential backoff (``retry_s`` up to ``max_retry_s``, at most ``max_retries``
    times) and the gap is logged; a file ends at its end, with ``Ended`` (``done_key``: the file's
    key in a watch-folder).
    """

    def __init__(self, uri: str, settings: SourceSettings | None = None, ctx: SourceContext | None = None, *,
                 live: bool | None = None, max_gap_s: float = 10.0, retry_s: float = 0.5, max_retry_s: float = 30.0,
                 open_timeout_s: float = 10.0, done_key: str | None = None):
        super().__init__(uri, settings, ctx)
        self.uri = uri
        self.every_s, self.motion, self.max_gap_s = self.settings.sample_every_s, self.settings.motion, max_gap_s
        self.live = is_stream(uri) if live is None else live
        self.finite = not self.live
        self.retry_s, self.max_retry_s, self.max_retries = retry_s, max_retry_s, self.settings.max_retries
        self.open_timeout_s = open_timeout_s
        self.done_key = done_key
        state = self.progress.get(uri) if self.progress is not None else None
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

    def _connect(self, failures: int):
        """An open container, or None after a failed attempt at a live stream (waited for);
        ``failures`` counts this attempt, should it fail."""
        try:
            return self._open()
        except Exception as exc:
            if not self.live:
                raise RuntimeError(f"{self.uri}: cannot open video: {exc}") from exc
            if self.max_retries is not None and failures > self.max_retries:
                raise RuntimeError(f"{self.uri}: gave up after {failures - 1} failed reconnects ({exc})") from exc
            wait = min(self.max_retry_s, self.retry_s * 2 ** (failures - 1))
            log.warning("%s: cannot open (%s); retry in %.1f s", self.uri, exc, wait)
            self.stop.wait(wait)
            return None

    def items(self) -> Iterator[Item]:
        failures = 0
        sampler = _Sampler(self.every_s, self.motion, self.max_gap_s, self.resume_after)
        offset = 0.0  # stream time carried over reconnects (live streams restart their clock)
        while not self.stop.is_set():
            lost_at = time.time()
            container = self._connect(failures + 1)
            if container is None:
                failures += 1
                continue
            if failures:
                self.gaps.append((lost_at, time.time()))
                self.reconnects += 1
                log.warning("%s: reconnected after %d tries", self.uri, failures)
            failures = 0
            yield from self._decode(container, sampler, offset)
            if not self.live:
                if not self.stop.is_set():
                    yield Ended(self.uri, self.done_key)
                return
            offset = sampler.next_t or 0.0
            failures = 1
            log.warning("%s: stream ended or dropped; reopening", self.uri)
            self.stop.wait(self.retry_s)

    def _decode(self, container, sampler: _Sampler, offset: float) -> Iterator[Frame]:
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
                if not sampler.due(t):
                    continue
                img = frame.to_image()
                if sampler.moved(img, t):
                    yield Frame(self.uri, img, t, self.frames_decoded - 1, live=self.live)
        except Exception as exc:
            if not self.live:
                raise RuntimeError(f"{self.uri}: video stopped decoding: {exc}") from exc
            log.warning("%s: stream error (%s)", self.uri, exc)
        finally:
            container.close()


@register_source("stream", prefixes=STREAM_SCHEMES, describe="a stream URL", order=30)
def open_stream(spec: str, settings: SourceSettings, ctx: SourceContext) -> VideoSource:
    require("av", "monitor", f"{spec}: reading video streams")
    return VideoSource(spec, settings, ctx, live=True)


def _video_file(spec: str) -> bool:
    return "://" not in spec and Path(spec).suffix.lower() in VIDEO_EXTENSIONS


@register_source("video", claims=_video_file, describe=f"a video file ({', '.join(sorted(VIDEO_EXTENSIONS))})",
                 order=50)
def open_video_file(spec: str, settings: SourceSettings, ctx: SourceContext) -> VideoSource:
    if not Path(spec).is_file():
        raise FileNotFoundError(f"{spec}: video file not found")
    require("av", "monitor", f"{spec}: reading video files")
    return VideoSource(spec, settings, ctx)
