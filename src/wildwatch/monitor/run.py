"""``wildwatch monitor``: sources -> batched classification -> sightings -> events and alerts.

One thread per source reads frames into a bounded queue; this thread classifies them in
batches, updates the tracker, and writes each batch's sightings, queued alerts and source
progress in one SQLite transaction; a delivery thread empties the outbox. The status line shows
sources, frames/s, sightings and pending alerts.
"""

from __future__ import annotations

import base64
import io
import logging
import queue
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from wildwatch.data.splits import dhash64
from wildwatch.errors import UsageError
from wildwatch.monitor.alerts import AlertPolicy, ConsoleSinkConfig, Outbox, SinkConfig, make_sinks
from wildwatch.monitor.cases import CaseBook, Post
from wildwatch.monitor.events import EventStore, Sighting, explain_sqlite
from wildwatch.monitor.evidence import post_evidence
from wildwatch.monitor.sources import DEFAULT_KEYWORDS, Frame, VideoSource, iso, open_source
from wildwatch.monitor.tracker import Change, Sample, Track, Tracker
from wildwatch.species import species_info

log = logging.getLogger("wildwatch.monitor")


class MonitorConfig(BaseModel):
    """Settings of ``wildwatch monitor`` (the YAML file given with ``--config``; see the README)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list)
    db: Path = Path("events.db")
    sample_every_s: float = Field(0.5, gt=0, description="seconds of video between classified frames")
    motion: float = Field(0.0, ge=0, description="> 0: only frames that changed this much (0-255) are classified")
    k: int = Field(2, ge=1, description="a sighting needs the species in k ...")
    n: int = Field(3, ge=1, description="... of n consecutive samples")
    threshold: float = Field(0.6, ge=0, le=1, description="minimum probability for a sample to count")
    cooldown_s: float = Field(30.0, ge=0, description="absence that ends a sighting")
    burst_gap_s: float = Field(60.0, ge=0, description="folder photos: the same species from the same camera "
                               "taken less than this many seconds apart (EXIF time) is one sighting")
    batch_size: int = Field(16, ge=1)
    tiles: int = Field(0, ge=0, description=">= 2: frames without a confident answer get a second look at "
                       "tiles x tiles overlapping tiles (small or distant animals)")
    detect: bool = Field(False, description="the built-in animal detector finds boxes in each frame; each box "
                         "is classified on its own (camera-trap photos, small animals in large frames)")
    country: Optional[str] = None
    keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_KEYWORDS))
    folder_poll_s: float = Field(2.0, gt=0)
    feed_poll_s: float = Field(300.0, gt=0)
    once: bool = Field(False, description="folders and feeds: process what is there now, then stop")
    max_retries: Optional[int] = Field(None, ge=0, description="live streams: reconnect attempts (None: forever)")
    alerts: AlertPolicy = Field(default_factory=AlertPolicy)
    sinks: list[SinkConfig] = Field(default_factory=lambda: [ConsoleSinkConfig()])
    retry_backoff_s: float = Field(1.0, gt=0)
    max_backoff_s: float = Field(300.0, gt=0)
    drain_s: float = Field(30.0, ge=0, description="at the end, wait this long for pending alerts")
    allow_hosts: list[str] = Field(default_factory=list, description="feeds: hosts, addresses or networks "
                                   "(192.168.1.0/24) on a private network that posts may point at; by default "
                                   "only public addresses and the feed's own host are fetched from")
    fetch_deadline_s: float = Field(60.0, gt=0, description="feeds: the longest one fetch may take, in all")
    fetch_max_bytes: int = Field(50 << 20, gt=0, description="feeds: the largest feed or image fetched")
    host_interval_s: float = Field(1.0, ge=0, description="media watch: at most one request per this many seconds "
                                   "to a site")
    follow_links: bool = Field(False, description="page: sources: also read the pages a page links to on the same "
                               "site (one level)")
    review_url: str = Field("http://127.0.0.1:8000/", description="media watch: the review page that alerts link to "
                            "(wildwatch serve --events-db on this database)")

    def check_country(self) -> None:
        if self.country and (len(self.country) != 2 or not self.country.isalpha()):
            raise UsageError(f"country {self.country!r}: give an ISO 3166-1 alpha-2 code such as KE, IN or BR")

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> "MonitorConfig":
        values = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"{path}: monitor config not found")
            values = yaml.safe_load(p.read_text()) or {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


Classify = Callable[[Sequence[Image.Image]], list]  # images -> predictions (species, confidence, unknown, ...)


def jpeg_bytes(img: Image.Image, quality: int = 85, max_side: int = 1280) -> bytes:
    img = img.convert("RGB")
    if max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


_END = object()


def alert_content(t: Track) -> str:
    """What a sighting's alert is about, independent of any database row: its source, species and
    item (a photo or post image: its index and perceptual hash; a video: the stream time of its
    first sample; a live stream: that wall time). Its idempotency key is derived from this."""
    first = t.first
    if first.single:
        seen = f"{first.frame_index}:{dhash64(t.best.image):016x}" if t.best.image is not None else str(first.frame_index)
    else:
        seen = f"{first.clock:.3f}"
    return f"sighting\0{t.source}\0{t.species}\0{seen}"


def frame_classifier(predictor, cfg: MonitorConfig):
    """What the monitor calls on a list of frames: the predictor, with the country of the cameras and,
    with ``tiles`` >= 2, a second look at tiles of frames without a confident answer."""
    if cfg.country:
        predictor.country = cfg.country.upper()
    if cfg.detect:
        from wildwatch.inference.camtrap import DetectPipeline

        return DetectPipeline(predictor).predict_images
    if cfg.tiles < 2:
        return predictor.predict_images

    def classify(images):
        return predictor.refine_with_tiles(images, predictor.predict_images(images), cfg.tiles, cfg.threshold)

    return classify


class Monitor:
    def __init__(self, cfg: MonitorConfig, classify: Classify, store: EventStore | None = None,
                 sinks: dict | None = None, status: bool = True, status_stream=None):
        self.cfg = cfg
        self.classify = classify
        self.store = store or EventStore(cfg.db, writer=True)
        self.sinks = sinks if sinks is not None else make_sinks(cfg.sinks)
        self.outbox = Outbox(self.store, self.sinks, cfg.retry_backoff_s, cfg.max_backoff_s)
        self.tracker = Tracker(cfg.k, cfg.n, cfg.threshold, cfg.cooldown_s)
        self.cases = CaseBook(self.store)
        self._posts: dict[str, list] = {}  # a media post's (frame, prediction) until its last frame
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.status = status
        self.status_stream = status_stream or sys.stderr
        self.frames = 0
        self.sightings = 0
        self.errors: list[str] = []
        self.known_sources: set[str] = set()
        self.meta: dict[tuple[str, str], dict] = {}  # (source, species) -> prediction fields of the sighting
        self.bursts: dict[tuple[str, str], dict] = {}  # (camera, species) -> the sighting of its last burst

    # -- tracker state across restarts

    def _restore(self, source: str) -> None:
        if source in self.known_sources:
            return
        self.known_sources.add(source)
        state = self.store.get(source) or {}
        tracks = []
        for s, _ in self.store.open_sightings(source):
            info = (state.get("tracks") or {}).get(s.species, {})
            last = Sample(source, info.get("last_clock", s.stream_end_s or 0.0), s.stream_end_s, time.time(),
                          s.frame_index, s.species, s.peak_confidence)
            t = Track(source, s.species, last, last, last, sighting_id=s.id, hits=info.get("hits", 1))
            tracks.append(t)
            self.meta[(source, s.species)] = {"common_name": s.common_name, "iucn_status": s.iucn_status,
                                              "threatened": s.threatened, "country": s.country,
                                              "latitude": s.latitude, "longitude": s.longitude}
        self.tracker.restore(source, state.get("window", []), tracks)

    def _state(self, source: str, frame: Frame | None) -> dict:
        old = self.store.get(source) or {}
        tracks = {t.species: {"last_clock": t.last_seen.clock, "hits": t.hits, "sighting_id": t.sighting_id}
                  for (src, _), t in self.tracker.open.items() if src == source}
        state = {"window": self.tracker.window_state(source), "tracks": tracks,
                 "stream_time_s": old.get("stream_time_s")}
        if frame is not None and frame.stream_time_s is not None:
            state["stream_time_s"] = frame.stream_time_s
        return state

    # -- writing sightings and alerts (inside one transaction)

    def _apply(self, change: Change, frame: Frame) -> bool:
        t = change.track
        info = self.meta.get((t.source, t.species), {})
        if change.kind == "open":
            self.sightings += 1
            s = Sighting(t.source, t.species, round(t.peak, 5), iso(t.first.wall_time), iso(t.last_seen.wall_time),
                         info.get("common_name", ""), info.get("iucn_status", ""), bool(info.get("threatened")),
                         t.best.frame_index, t.first.stream_time_s, t.last_seen.stream_time_s, info.get("country"),
                         info.get("latitude"), info.get("longitude"), frame.priority, ",".join(frame.keywords),
                         frame.link, t.last_seen.wall_time)
            snap = jpeg_bytes(t.best.image) if t.best.image is not None else None
            t.sighting_id = self.store.insert(s, snap, open_=not t.first.single)
            t.extra["snapshot_of"] = id(t.best)
            pol = self.cfg.alerts
            # a media post alerts through its case (evidence, reposts grouped), not photo by photo
            if frame.post_key is None and pol.wants(t.species, s.iucn_status, t.peak, frame.priority):
                payload = {"sighting_id": t.sighting_id, "species": t.species, "common_name": s.common_name,
                           "iucn_status": s.iucn_status, "threatened": s.threatened, "confidence": s.peak_confidence,
                           "source": t.source, "stream_time_s": s.stream_start_s, "frame_index": s.frame_index,
                           "wall_time": s.wall_start, "frame_wall_time": t.last_seen.wall_time,
                           "queued_at": time.time(), "country": s.country, "priority": frame.priority,
                           "keywords": list(frame.keywords), "link": frame.link, "text": frame.text,
                           "instance": self.store.instance}
                self.outbox.enqueue(t.sighting_id, payload, frame.priority,
                                    pol.not_before(time.time(), s.iucn_status, frame.priority), content=alert_content(t))
                return True
            return False
        if t.sighting_id is None:
            return False
        values = {"wall_end": iso(t.last_seen.wall_time), "stream_end_s": t.last_seen.stream_time_s,
                  "peak_confidence": round(t.peak, 5), "frame_index": t.best.frame_index}
        if change.kind == "close":
            values["open"] = 0
            self.meta.pop((t.source, t.species), None)
            if t.best.image is not None and t.extra.get("snapshot_of") != id(t.best):
                values["snapshot"] = jpeg_bytes(t.best.image)
        self.store.update_sighting(t.sighting_id, **values)
        return False

    def _same_burst(self, f: Frame, s: Sample) -> bool:
        """A folder photo of the species its camera's last sighting is of, taken within ``burst_gap_s``
        of it (EXIF time): that sighting grows (end time, best photo) instead of a new one opening."""
        b = self.bursts.get((f.camera, s.species)) if f.camera and s.species else None
        if b is None or abs(s.wall_time - b["last"]) > self.cfg.burst_gap_s:
            return False
        values = {"wall_end": iso(max(s.wall_time, b["last"]))}
        if s.confidence > b["peak"]:
            values |= {"peak_confidence": round(s.confidence, 5), "snapshot": jpeg_bytes(s.image)}
            b["peak"] = s.confidence
        b["last"] = max(s.wall_time, b["last"])
        self.store.update_sighting(b["id"], **values)
        return True

    def _file_post(self, key: str) -> bool:
        """A post's photos are all classified: its evidence, its case, and the case's alert if due."""
        items = self._posts.pop(key)
        first = items[0][0]
        shown = [(f.image, p) for f, p in items if p is not None]
        preds = [p for _, p in shown]
        ev = post_evidence(first.post_text, preds)
        named = [(im, p) for im, p in shown if p.named]
        best = max(named, key=lambda x: x[1].confidence)[0] if named else (shown[0][0] if shown else None)
        thumb = None
        if best is not None:
            small = best.copy()
            small.thumbnail((320, 320))
            thumb = jpeg_bytes(small)
        update = self.cases.add_post(Post(key, first.source, first.link, first.post_text, first.account), ev,
                                     [dhash64(im) for im, _ in shown], thumb)
        if update is None or update.alert is None:
            return False
        case = self.cases.get(update.case_id)
        pol = self.cfg.alerts
        info = species_info(case["species"]) if case["species"] else None
        # trade risk is about CITES listing (a jaguar, Near Threatened, is on Appendix I), not the Red List
        if info is not None and not info.cites_listed and not pol.wants(case["species"], case["iucn_status"], 1.0,
                                                                        max(first.priority, 1)):
            return False
        payload = {"case_id": case["id"], "sighting_id": 0, "why": update.alert, "score": case["score"],
                   "reason": case["reason"], "species": case["species"] or "unknown",
                   "common_name": info.common_name if info else "", "iucn_status": case["iucn_status"],
                   "threatened": bool(info and info.threatened), "confidence": case["score"],
                   "cites_appendix": info.cites_appendix if info else "",
                   "source": first.source, "link": first.link, "text": first.text,
                   "links": sorted({p["link"] for p in case["posts"] if p["link"]}),
                   "accounts": case["accounts"], "sites": case["sites"], "terms": case["terms"],
                   "posts": len(case["posts"]), "review_url": f"{self.cfg.review_url.rstrip('/')}/#case-{case['id']}",
                   "priority": first.priority, "keywords": list(first.keywords), "wall_time": iso(time.time()),
                   "queued_at": time.time(), "instance": self.store.instance,
                   "snapshot_jpeg_base64": base64.b64encode(thumb).decode() if thumb else None}
        self.outbox.enqueue(0, payload, max(first.priority, 1), pol.not_before(time.time(), case["iucn_status"], 1),
                            content=f"case\0{key}\0{update.alert}\0{case['alerts']}")
        return True

    def _process(self, frames: list[Frame]) -> None:
        work = [f for f in frames if not f.skip]
        preds = self.classify([f.image for f in work]) if work else []
        by_id = {id(f): p for f, p in zip(work, preds)}
        alerted = False
        touched: dict[str, Frame | None] = {}
        with self.store.transaction():
            for f in frames:
                if not f.single:
                    self._restore(f.source)
                changes: list[Change] = []
                if not f.skip:
                    p = by_id[id(f)]
                    species = self.tracker.label(p.species, p.confidence, not p.named)
                    place = f.place  # a photo's own EXIF position, where the classifier had none
                    if species and (f.source, species) not in self.tracker.open:
                        self.meta[(f.source, species)] = {
                            "common_name": p.common_name, "iucn_status": p.iucn_status, "threatened": p.threatened,
                            "country": getattr(p, "country", None) or getattr(place, "country", None),
                            "latitude": getattr(p, "latitude", None) or getattr(place, "latitude", None),
                            "longitude": getattr(p, "longitude", None) or getattr(place, "longitude", None)}
                    clock = f.wall_time if f.stream_time_s is None or getattr(f, "live", False) else f.stream_time_s
                    sample = Sample(f.source, clock, f.stream_time_s, f.wall_time, f.frame_index, species,
                                    float(p.confidence), f.image, f.single)
                    changes = [] if self._same_burst(f, sample) else self.tracker.update(sample)
                    self.frames += 1
                if f.ends_source:
                    changes += self.tracker.close_source(f.source)
                for ch in changes:
                    alerted |= self._apply(ch, f)
                    if ch.kind == "open" and f.camera and ch.track.sighting_id is not None:
                        self.bursts[(f.camera, ch.track.species)] = {"id": ch.track.sighting_id,
                                                                     "last": f.wall_time, "peak": ch.track.peak}
                if f.post_key:
                    self._posts.setdefault(f.post_key, []).append((f, None if f.skip else by_id[id(f)]))
                    if f.done_key == f.post_key:
                        alerted |= self._file_post(f.post_key)
                if f.done_key:
                    self.store.mark_done(f.done_key)
                if not f.single and (not f.skip or f.source not in touched):
                    touched[f.source] = None if f.skip else f
            for src, f in touched.items():
                self.store.set_progress(src, self._state(src, f))
        if alerted:
            self.wake.set()

    # -- the run

    def _reader(self, spec: str, source, q: queue.Queue) -> None:
        try:
            for frame in source:
                while not self.stop.is_set():
                    try:
                        q.put(frame, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    break
            if not self.stop.is_set() and isinstance(source, VideoSource) and not source.live:
                q.put(Frame(source.uri, Image.new("RGB", (1, 1)), None, None, skip=True, ends_source=True))
        except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
            msg = f"{spec}: {exc}"
            log.error("%s", msg)
            self.errors.append(msg)
        finally:
            self.errors.extend(getattr(source, "errors", []))
            q.put((_END, spec))

    def _status_line(self, active: int, total: int, fps: float) -> None:
        c = self.outbox.counts()
        line = (f"\r{active}/{total} sources | {fps:5.1f} frames/s | {self.sightings} sightings | "
                f"alerts {c['pending']} pending, {c['delivered']} sent, {c['failed']} failed ")
        self.status_stream.write(line)
        self.status_stream.flush()

    def run(self, specs: Sequence[str] | None = None) -> dict:
        specs = list(specs if specs is not None else self.cfg.sources)
        try:
            sources = self._open_sources(specs)
        except Exception:
            self.store.discard()  # a run that cannot start leaves no new, empty database behind
            raise
        try:
            return self._run(specs, sources)
        except sqlite3.Error as exc:  # the disk is full, the file turned read-only ...: in words
            raise explain_sqlite(self.store.path, exc) from None

    def _open_sources(self, specs: list[str]) -> list:
        if not specs:
            raise UsageError("no sources: give video files, stream URLs, folders or feeds")
        return [open_source(s, progress=self.store, stop=self.stop, every_s=self.cfg.sample_every_s,
                               motion=self.cfg.motion, once=self.cfg.once, poll_s=self.cfg.folder_poll_s,
                               feed_poll_s=self.cfg.feed_poll_s, keywords=tuple(self.cfg.keywords),
                               max_retries=self.cfg.max_retries, allow_hosts=tuple(self.cfg.allow_hosts),
                               fetch_deadline_s=self.cfg.fetch_deadline_s, fetch_max_bytes=self.cfg.fetch_max_bytes,
                               host_interval_s=self.cfg.host_interval_s, follow_links=self.cfg.follow_links)
                for s in specs]

    def _run(self, specs: list[str], sources: list) -> dict:
        q: queue.Queue = queue.Queue(maxsize=4 * self.cfg.batch_size)
        readers = [threading.Thread(target=self._reader, args=(spec, src, q), daemon=True, name=f"source {spec}")
                   for spec, src in zip(specs, sources)]
        sender = threading.Thread(target=self.outbox.run, args=(self.stop, self.wake), daemon=True, name="alerts")
        restore = {}
        if threading.current_thread() is threading.main_thread():
            restore = {sig: signal.signal(sig, lambda *_: self.stop.set()) for sig in (signal.SIGTERM,)}
        t0 = last_status = last_check = time.time()
        frames_at_status = 0
        active = len(readers)
        sender.start()
        for r in readers:
            r.start()
        try:
            while active and not self.stop.is_set():
                batch: list[Frame] = []
                deadline = None
                while len(batch) < self.cfg.batch_size:
                    try:
                        item = q.get(timeout=0.2 if not batch else max(0.0, deadline - time.time()))
                    except queue.Empty:
                        break
                    if isinstance(item, tuple) and item and item[0] is _END:
                        active -= 1
                        if not active:
                            break
                        continue
                    batch.append(item)
                    deadline = deadline or time.time() + 0.05
                if batch:
                    self._process(batch)
                now = time.time()
                if now - last_check >= 1.0:  # the database deleted or replaced under us: stop now
                    self.store.check_file()
                    last_check = now
                if self.status and now - last_status >= 1.0:
                    self._status_line(active, len(readers), (self.frames - frames_at_status) / (now - last_status))
                    last_status, frames_at_status = now, self.frames
            # what is still queued (a stop while readers were ahead) is processed before leaving
            rest = []
            while True:
                try:
                    item = q.get_nowait()
                except queue.Empty:
                    break
                if not (isinstance(item, tuple) and item and item[0] is _END):
                    rest.append(item)
            if rest and not self.stop.is_set():
                self._process(rest)
            end = time.time() + self.cfg.drain_s
            while not self.stop.is_set() and self.outbox.counts()["pending"] and time.time() < end:
                due = self.outbox.next_due_in()
                if due is not None and time.time() + due > end:
                    break
                self.wake.set()
                time.sleep(0.05)
        except KeyboardInterrupt:
            log.warning("interrupted; state is saved, run again to continue")
        finally:
            self.stop.set()
            self.wake.set()
            sender.join(timeout=10)
            for sig, old in restore.items():
                signal.signal(sig, old)
            if self.store.writer is not None:
                self.store.writer.release()  # another monitor may take the database from now on
            if self.status:
                self._status_line(0, len(readers), self.frames / max(time.time() - t0, 1e-9))
                self.status_stream.write("\n")
        return {"frames": self.frames, "sightings": self.sightings, "seconds": round(time.time() - t0, 3),
                "alerts": self.outbox.counts(), "errors": list(self.errors)}
