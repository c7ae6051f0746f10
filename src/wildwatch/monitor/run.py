"""``wildwatch monitor``: sources -> batched classification -> sightings -> events and alerts.

One thread per source reads frames into a bounded queue; this thread classifies them in
batches, updates the tracker, and writes each batch's sightings, queued alerts and source
progress in one SQLite transaction; a delivery thread empties the outbox. The status line shows
sources, frames/s, sightings and pending alerts.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from PIL import Image
from pydantic import ConfigDict, Field

from wildwatch.data.splits import dhash64
from wildwatch.errors import UsageError
from wildwatch.monitor.alerts import AlertPolicy, ConsoleSinkConfig, Outbox, Sink, SinkConfig, make_sinks
from wildwatch.monitor.evidence import post_evidence
from wildwatch.monitor.record import alert_content, case_alert, jpeg_bytes, sighting_alert, sighting_of
from wildwatch.monitor.sources import Done, Ended, Frame, Item, PostInfo, Source, SourceSettings, iso, open_source
from wildwatch.monitor.tracker import Answer, Change, Sample, Track, Tracker
from wildwatch.species import species_info
from wildwatch.store.cases import CaseBook, Post
from wildwatch.store.events import EventStore, explain_sqlite

log = logging.getLogger("wildwatch.monitor")


class MonitorConfig(SourceSettings):
    """Settings of ``wildwatch monitor`` (the YAML file given with ``--config``; see the README). The
    sources' settings are ``SourceSettings``'s fields, written there once."""

    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(default_factory=list)
    db: Path = Path("events.db")
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
    country: str | None = None
    alerts: AlertPolicy = Field(default_factory=AlertPolicy)
    sinks: list[SinkConfig] = Field(default_factory=lambda: list[SinkConfig]([ConsoleSinkConfig()]))
    retry_backoff_s: float = Field(1.0, gt=0)
    max_backoff_s: float = Field(300.0, gt=0)
    drain_s: float = Field(30.0, ge=0, description="at the end, wait this long for pending alerts")
    review_url: str = Field("http://127.0.0.1:8000/", description="media watch: the review page that alerts link to "
                            "(wildwatch serve --events-db on this database)")

    def source_settings(self) -> SourceSettings:
        """What the sources read, built once per run."""
        return SourceSettings.model_validate(self.model_dump(include=set(SourceSettings.model_fields)))

    def check_country(self) -> None:
        if self.country and (len(self.country) != 2 or not self.country.isalpha()):
            raise UsageError(f"country {self.country!r}: give an ISO 3166-1 alpha-2 code such as KE, IN or BR")

    @classmethod
    def load(cls, path: str | Path | None, **overrides) -> MonitorConfig:
        values: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise FileNotFoundError(f"{path}: monitor config not found")
            values = yaml.safe_load(p.read_text()) or {}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)


Classify = Callable[[Sequence[Image.Image]], Sequence[Answer]]  # images -> their answers (Predictions)


@dataclass(frozen=True)
class _ReaderDone:
    """A reader thread has finished with its source."""

    spec: str


@dataclass
class _Burst:
    """The sighting of a camera's last burst of one species (folder photos)."""

    sighting_id: int
    last: float  # capture time of its latest photo
    peak: float


def _burst_key(camera: str, species: str) -> str:
    """Where the store keeps a camera's last burst of a species (beside the sources' progress)."""
    return f"burst\t{camera}\t{species}"


@dataclass
class _PostPart:
    """One image of a media post (or a post with none: ``image`` None), and its answer."""

    source: str
    link: str
    image: Image.Image | None
    answer: Answer | None


def frame_classifier(predictor, cfg: MonitorConfig):
    """What the monitor calls on a list of frames: the predictor, with the country of the cameras and,
    with ``tiles`` >= 2, a second look at tiles of frames without a confident answer."""
    if cfg.country and predictor.country != cfg.country.upper():
        predictor = dataclasses.replace(predictor, country=cfg.country.upper())  # the same model and runner
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
                 sinks: dict[str, Sink] | None = None, status: bool = True, status_stream=None):
        self.cfg = cfg
        self.classify = classify
        self.store = store or EventStore(cfg.db, writer=True)
        self.sinks = sinks if sinks is not None else make_sinks(cfg.sinks)
        self.outbox = Outbox(self.store, self.sinks, cfg.retry_backoff_s, cfg.max_backoff_s)
        self.tracker = Tracker(cfg.k, cfg.n, cfg.threshold, cfg.cooldown_s)
        self.cases = CaseBook(self.store)
        self._posts: dict[str, tuple[PostInfo, list[_PostPart]]] = {}  # a media post's parts until its last one
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.status = status
        self.status_stream = status_stream or sys.stderr
        self.frames = 0
        self.sightings = 0
        self.errors: list[str] = []
        self.known_sources: set[str] = set()
        self.bursts: dict[tuple[str, str], _Burst] = {}  # (camera, species) -> the sighting of its last burst

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
            tracks.append(Track(source, s.species, last, last, last, sighting_id=s.id, hits=info.get("hits", 1)))
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

    def _apply(self, change: Change, frame: Frame | None) -> bool:
        """Record a tracker change; True when it queued an alert."""
        t = change.track
        if change.kind == "open" and frame is not None:
            return self._open(t, frame)
        if t.sighting_id is None:
            return False
        values: dict[str, object] = {"wall_end": iso(t.last_seen.wall_time), "stream_end_s": t.last_seen.stream_time_s,
                                     "peak_confidence": round(t.peak, 5), "frame_index": t.best.frame_index}
        if change.kind == "close":
            values["open"] = 0
            if t.best.image is not None and t.snapshot_of != id(t.best):
                values["snapshot"] = jpeg_bytes(t.best.image)
        self.store.update_sighting(t.sighting_id, **values)
        return False

    def _open(self, t: Track, frame: Frame) -> bool:
        self.sightings += 1
        s = sighting_of(t, frame)
        snap = jpeg_bytes(t.best.image) if t.best.image is not None else None
        t.sighting_id = self.store.insert(s, snap, open_=not t.first.single)
        t.snapshot_of = id(t.best)
        pol = self.cfg.alerts
        # a media post alerts through its case (evidence, reposts grouped), not photo by photo
        if frame.post is not None or not pol.wants(t.species, s.iucn_status, t.peak, frame.priority):
            return False
        self.outbox.enqueue(t.sighting_id, sighting_alert(t, s, frame, self.store.instance), frame.priority,
                            pol.not_before(time.time(), s.iucn_status, frame.priority), content=alert_content(t))
        return True

    def _same_burst(self, f: Frame, s: Sample) -> bool:
        """A folder photo of the species its camera's last sighting is of, taken within ``burst_gap_s``
        of it (EXIF time): that sighting grows (end time, best photo) instead of a new one opening."""
        b = self._burst(f.camera, s.species) if f.camera and s.species else None
        if b is None or abs(s.wall_time - b.last) > self.cfg.burst_gap_s:
            return False
        values: dict[str, object] = {"wall_end": iso(max(s.wall_time, b.last))}
        if s.confidence > b.peak:
            values["peak_confidence"] = round(s.confidence, 5)
            if s.image is not None:  # a folder photo always has its image
                values["snapshot"] = jpeg_bytes(s.image)
            b.peak = s.confidence
        b.last = max(s.wall_time, b.last)
        self.store.update_sighting(b.sighting_id, **values)
        self._keep_burst(f.camera, s.species, b)
        return True

    def _burst(self, camera: str, species: str) -> _Burst | None:
        """The camera's last burst of the species: in memory, else as the store kept it (a restart
        in the middle of a burst goes on with the same sighting)."""
        key = (camera, species)
        if key not in self.bursts:
            kept = self.store.get(_burst_key(camera, species))
            if not isinstance(kept, dict):
                return None
            try:
                self.bursts[key] = _Burst(int(kept["sighting_id"]), float(kept["last"]), float(kept["peak"]))
            except (KeyError, TypeError, ValueError):
                return None  # a damaged record: a new sighting opens, nothing else is lost
        return self.bursts[key]

    def _keep_burst(self, camera: str, species: str, b: _Burst) -> None:
        """Inside the frame's transaction: the burst as it now stands, for a restart."""
        self.bursts[(camera, species)] = b
        self.store.set_progress(_burst_key(camera, species), dataclasses.asdict(b))

    def _file_post(self, key: str) -> bool:
        """A post's photos are all classified: its evidence, its case, and the case's alert if due."""
        post, parts = self._posts.pop(key)
        shown = [(x.image, x.answer) for x in parts if x.answer is not None]
        ev = post_evidence(post.text, [a for _, a in shown])
        named = [(im, a) for im, a in shown if a.named]
        best = max(named, key=lambda x: x[1].confidence)[0] if named else (shown[0][0] if shown else None)
        thumb = None
        if best is not None:
            small = best.copy()
            small.thumbnail((320, 320))
            thumb = jpeg_bytes(small)
        first = parts[0]
        update = self.cases.add_post(Post(key, first.source, first.link, post.text, post.account), ev,
                                     [dhash64(im) for im, _ in shown], thumb)
        if update is None or update.alert is None:
            return False
        case = self.cases.get(update.case_id)
        assert case is not None  # add_post has just written it, in this transaction
        pol = self.cfg.alerts
        info = species_info(case["species"]) if case["species"] else None
        # trade risk is about CITES listing (a jaguar, Near Threatened, is on Appendix I), not the Red List
        if info is not None and not info.cites_listed and not pol.wants(case["species"], case["iucn_status"], 1.0,
                                                                        max(post.priority, 1)):
            return False
        alert = case_alert(case, update, post, first.source, first.link, self.cfg.review_url, self.store.instance,
                           thumb)
        self.outbox.enqueue(0, alert, max(post.priority, 1), pol.not_before(time.time(), case["iucn_status"], 1),
                            content=f"case\0{key}\0{update.alert}\0{case['alerts']}")
        return True

    # -- one batch of items, in one transaction

    def _process(self, items: list[Item]) -> None:
        frames = [x for x in items if isinstance(x, Frame)]
        answers = self.classify([f.image for f in frames]) if frames else []
        by_id = {id(f): a for f, a in zip(frames, answers)}
        alerted = False
        touched: dict[str, Frame | None] = {}  # sources whose progress this batch moves
        with self.store.transaction():
            for x in items:
                if isinstance(x, Frame):
                    alerted |= self._frame(x, by_id[id(x)], touched)
                elif isinstance(x, Ended):
                    alerted |= self._ended(x, touched)
                else:
                    alerted |= self._done(x)
            for src, f in touched.items():
                self.store.set_progress(src, self._state(src, f))
        if alerted:
            self.wake.set()

    def _frame(self, f: Frame, a: Answer, touched: dict[str, Frame | None]) -> bool:
        if not f.single:
            self._restore(f.source)
        species = self.tracker.label(a.species, a.confidence, not a.named)
        clock = f.wall_time if f.stream_time_s is None or f.live else f.stream_time_s
        sample = Sample(f.source, clock, f.stream_time_s, f.wall_time, f.frame_index, species, float(a.confidence),
                        f.image, f.single, a, f.place)
        changes = [] if self._same_burst(f, sample) else self.tracker.update(sample)
        self.frames += 1
        alerted = False
        for ch in changes:
            alerted |= self._apply(ch, f)
            if ch.kind == "open" and f.camera and ch.track.sighting_id is not None:
                self._keep_burst(f.camera, ch.track.species, _Burst(ch.track.sighting_id, f.wall_time, ch.track.peak))
        if f.post is not None:
            alerted |= self._post_part(f.post, _PostPart(f.source, f.link, f.image, a), f.done_key == f.post.key)
        if f.done_key:
            self.store.mark_done(f.done_key)
        if not f.single:
            touched[f.source] = f
        return alerted

    def _ended(self, e: Ended, touched: dict[str, Frame | None]) -> bool:
        """A video ended: its sightings close, and its progress is kept (a file: done)."""
        self._restore(e.source)
        alerted = False
        for ch in self.tracker.close_source(e.source):
            alerted |= self._apply(ch, None)
        if e.done_key:
            self.store.mark_done(e.done_key)
        touched.setdefault(e.source, None)
        return alerted

    def _done(self, d: Done) -> bool:
        """A folder file or post finished with nothing to classify (a post is still filed)."""
        alerted = False
        if d.post is not None:
            alerted = self._post_part(d.post, _PostPart(d.source, d.post.link, None, None), True)
        self.store.mark_done(d.key)
        return alerted

    def _post_part(self, post: PostInfo, part: _PostPart, last: bool) -> bool:
        self._posts.setdefault(post.key, (post, []))[1].append(part)
        return self._file_post(post.key) if last else False

    # -- the run

    def _reader(self, spec: str, source: Source, q: queue.Queue) -> None:
        try:
            for item in source.items():
                while not self.stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    break
            if not (self.stop.is_set() or source.finite):  # a live source ends only when the run stops
                log.warning("%s: the source ended by itself", spec)
        except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
            msg = f"{spec}: {exc}"
            log.error("%s", msg)
            self.errors.append(msg)
        finally:
            self.errors.extend(source.errors)
            q.put(_ReaderDone(spec))

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
        finally:
            for src in sources:
                src.close()

    def _open_sources(self, specs: list[str]) -> list[Source]:
        if not specs:
            raise UsageError("no sources: give video files, stream URLs, folders or feeds")
        settings = self.cfg.source_settings()
        return [open_source(s, settings, progress=self.store, stop=self.stop) for s in specs]

    def _run(self, specs: list[str], sources: list[Source]) -> dict:
        q: queue.Queue = queue.Queue(maxsize=4 * self.cfg.batch_size)
        readers = [threading.Thread(target=self._reader, args=(spec, src, q), daemon=True, name=f"source {spec}")
                   for spec, src in zip(specs, sources)]
        sender = threading.Thread(target=self.outbox.run, args=(self.stop, self.wake), daemon=True, name="alerts")
        restore = {}
        if threading.current_thread() is threading.main_thread():
            restore = {sig: signal.signal(sig, lambda *_: self.stop.set()) for sig in (signal.SIGTERM,)}
        t0 = time.time()
        sender.start()
        for r in readers:
            r.start()
        try:
            self._loop(q, len(readers))
            self._finish(q)
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

    def _loop(self, q: queue.Queue, total: int) -> None:
        """Batches of items until every reader is done (or the run is stopped)."""
        active = total
        last_status = last_check = time.time()
        frames_at_status = 0
        while active and not self.stop.is_set():
            batch, finished = self._batch(q)
            active -= finished
            if batch:
                self._process(batch)
            now = time.time()
            if now - last_check >= 1.0:  # the database deleted or replaced under us: stop now
                self.store.check_file()
                last_check = now
            if self.status and now - last_status >= 1.0:
                self._status_line(active, total, (self.frames - frames_at_status) / (now - last_status))
                last_status, frames_at_status = now, self.frames

    def _batch(self, q: queue.Queue) -> tuple[list[Item], int]:
        """Up to ``batch_size`` items (waiting at most 50 ms for more once one is in), and how many
        readers finished meanwhile."""
        batch: list[Item] = []
        finished = 0
        deadline = None
        while len(batch) < self.cfg.batch_size:
            try:
                item = q.get(timeout=0.2 if deadline is None else max(0.0, deadline - time.time()))
            except queue.Empty:
                break
            if isinstance(item, _ReaderDone):
                finished += 1
                continue
            batch.append(item)
            deadline = deadline or time.time() + 0.05
        return batch, finished

    def _finish(self, q: queue.Queue) -> None:
        """What is still queued (a stop while readers were ahead) is processed; pending alerts get
        ``drain_s`` to go out."""
        rest = []
        while True:
            try:
                item = q.get_nowait()
            except queue.Empty:
                break
            if not isinstance(item, _ReaderDone):
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
