"""``classify --detect``: the built-in detector proposes boxes, each box is classified on a crop, and
the photo's answer combines the boxes and the whole photo.

Per photo: one decode at a JPEG draft scale near the detector's input (for the detector and the
whole-photo answer), the detector, and, when it found boxes, one more decode at the scale the
smallest box needs (``crops.decode_for_crops``; none when the first decode has the detail) for
the crops; the whole photo is classified only when there is no box. Each box is named like a photo:
a species, or unknown with what it looks like (an animal of another species, a person, a
vehicle). The photo's answer: the most confident species named on a box; with boxes but no
species named, unknown, shown by the most telling box (an animal before a person before a
vehicle); with no box at all, the whole photo's answer, as without the detector (a missed animal
is never dropped, and the detector fires on people and objects too), with a whole-photo box when
it names a species or what the photo looks like (a vague "some animal" where the detector saw
nothing counts as empty).

Rows gain ``detections`` (box, detector confidence, label, kind, species confidence, what it looks
like) and ``count`` (boxes per label). Photos run on every core at once, each thread with its
own single-threaded sessions, in input order, with at most a few photos in memory.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from wildwatch.data.discover import expand_paths
from wildwatch.data.loading import DEFAULT_MAX_PIXELS, ImageLoadError, load_photo, load_photo_bytes
from wildwatch.field import Place, place_from_exif
from wildwatch.inference.crops import crops, decode_for_crops
from wildwatch.inference.detect import Box, Detector
from wildwatch.inference.pipeline import one_blas_thread
from wildwatch.inference.prediction import Prediction
from wildwatch.inference.sequences import (
    DEFAULT_GAP_S,
    PhotoAnswer,
    camera_key,
    capture_moment,
    decide,
    group_events,
    photo_facts,
)

KIND_PRECEDENCE = ("animal", "person", "vehicle")
WHOLE_PHOTO_BOX = [0.0, 0.0, 1.0, 1.0]


@dataclass(frozen=True)
class DetectedPrediction(Prediction):
    """A Prediction with the boxes that made it: ``detections`` (dicts, see ``box_entry``) and
    ``count`` (boxes per label: a species key, "unknown", "person" or "vehicle")."""

    detections: tuple[dict, ...] = ()
    count: dict = field(default_factory=dict)

    def to_row(self) -> dict:
        d = super().to_row()
        d["detections"] = json.dumps(list(self.detections))
        d["count"] = json.dumps(self.count)
        return d


def label_of(p: Prediction) -> tuple[str, str]:
    """(label, kind) of an answer: a species key and "animal"; "uncertain" and "animal" for an animal
    between two species; "unknown" and "animal" for an animal of none of the species; "person" or
    "vehicle"; or ("", "") when it shows none of these (a scene, an object, nothing sure)."""
    if p.error:
        return "", ""
    if not p.unknown:
        return ("uncertain" if p.uncertain else p.species), "animal"
    if p.looks_like_kind in ("person", "vehicle"):
        return p.looks_like_kind, p.looks_like_kind
    return ("unknown", "animal") if p.looks_like_kind == "animal" else ("", "")


def box_entry(p: Prediction, bbox: Sequence[float], conf: float | None, whole_photo: bool = False) -> dict:
    """One detection as rows carry it. A box the detector found keeps its kind "animal" when the
    crop shows none of animal, person or vehicle (it is evidence, not proof); its ``looks_like``
    says what the crop looked like."""
    label, kind = label_of(p)
    if not label:
        label, kind = "unknown", "animal"
    return {"bbox": [round(float(v), 4) for v in bbox], "conf": None if conf is None else round(float(conf), 4),
            "label": label, "kind": kind, "species": p.species if p.named else "",
            "candidates": list(p.candidates), "confidence": None if p.unknown else round(float(p.confidence), 4),
            "looks_like": p.looks_like, "looks_like_kind": p.looks_like_kind,
            "top_k": [dict(t) for t in p.top_k] if not p.unknown else [], "whole_photo": whole_photo}


def photo_detections(p: Prediction) -> list[dict]:
    """The detections of any answer: a DetectedPrediction's own; for a whole-photo answer, one
    box covering the photo when it names a species or shows an animal, a person or a vehicle
    (``whole_photo``), none when it shows none of them (empty) or failed."""
    if isinstance(p, DetectedPrediction):
        return list(p.detections)
    label, _ = label_of(p)
    return [box_entry(p, WHOLE_PHOTO_BOX, None, whole_photo=True)] if label else []


def counts(detections: Iterable[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in detections:
        out[d["label"]] = out.get(d["label"], 0) + 1
    return out


def photo_answer(p: Prediction) -> PhotoAnswer:
    """What a photo says, for grouping it with its sequence: its species, else what its boxes show
    (an unnamed animal before a person before a vehicle), else empty."""
    dets = photo_detections(p)
    n = counts(dets)
    if p.named:
        return PhotoAnswer(p.species, True, float(p.confidence), n)
    label = next((k for k in ("uncertain", "unknown", "person", "vehicle") if k in n), "empty")
    return PhotoAnswer(label, False, 0.0, n)


def with_boxes(base: Prediction, detections: list[dict]) -> DetectedPrediction:
    values = {f.name: getattr(base, f.name) for f in dataclasses.fields(Prediction)}
    return DetectedPrediction(**values, detections=tuple(detections), count=counts(detections))


def combine(whole: Prediction | None, boxes: Sequence[Box], box_preds: Sequence[Prediction]) -> DetectedPrediction:
    """The photo's answer from its boxes, or from the whole photo when there are none (see the
    module's rule)."""
    if not boxes:
        if whole is None:
            raise ValueError("a photo without boxes is answered by its whole-photo prediction, and none was given")
        # the detector saw nothing: a whole-photo box only for a species, or for what the classifier
        # is sure the photo shows; a vague "some animal" on a frame the detector found empty is empty
        sure = not whole.unknown or bool(whole.looks_like)
        return with_boxes(whole, photo_detections(whole) if sure else [])
    dets = [box_entry(p, b.bbox, b.conf) for b, p in zip(boxes, box_preds)]
    named = [p for p in box_preds if p.named] or [p for p in box_preds if p.uncertain]
    if named:
        best = max(named, key=lambda p: p.confidence)
    else:
        kinds = [label_of(p)[1] for p in box_preds]
        rank = [KIND_PRECEDENCE.index(k) if k in KIND_PRECEDENCE else len(KIND_PRECEDENCE) for k in kinds]
        best = box_preds[rank.index(min(rank))]
    return with_boxes(best, dets)


class DetectPipeline:
    """The built-in detector and a Predictor, photo by photo (see the module)."""

    def __init__(self, predictor, detector: Detector | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.predictor = predictor
        self.detector = detector or Detector()
        self.max_pixels = max_pixels

    def _worker_predictor(self):
        runner = self.predictor.runner
        if runner.per_core:
            return dataclasses.replace(self.predictor, runner=runner.single_threaded())
        return self.predictor

    def predict_file(self, path: str | Path | bytes, predictor=None, name: str | None = None,
                     country: str | None = None) -> DetectedPrediction:
        """One photo (a path, or an upload's bytes named ``name``) through the detector and the
        classifier; an unreadable one gets its ``error``. The whole photo is classified only when
        the detector found nothing in it. ``country``: the photos' country, over their EXIF GPS."""
        pred = predictor or self.predictor
        raw, where = (bytes(path), name or "upload") if isinstance(path, (bytes, bytearray, memoryview)) else (None, path)
        src = str(where)
        side = max(self.detector.size, pred.preprocess.resize_size)
        try:
            if raw is not None:
                img, exif = load_photo_bytes(raw, src, self.max_pixels, (side, side))
            else:
                img, exif = load_photo(where, self.max_pixels, (side, side))
            place = place_from_exif(exif) if pred.use_exif else Place()
            if country:
                place = dataclasses.replace(place or Place(), country=country.upper(), country_source="given")
            boxes = self.detector.detect([img])[0]
            if boxes:
                bboxes = [b.bbox for b in boxes]
                img = decode_for_crops(path, bboxes, pred.preprocess.image_size, self.max_pixels, decoded=img, name=src)
        except ImageLoadError as exc:
            return DetectedPrediction(src, error=str(exc))
        return self._answer(pred, img, boxes, src, place)

    def predict_images(self, images: Sequence, sources: Sequence[str] | None = None,
                       places: Sequence | None = None) -> list[DetectedPrediction]:
        """Decoded images (video frames, photos the monitor read): boxes, crops from the same image."""
        sources = list(sources) if sources is not None else [f"image{i}" for i in range(len(images))]
        out = []
        for i, img in enumerate(images):
            place = places[i] if places is not None else None
            out.append(self._answer(self.predictor, img, self.detector.detect([img])[0], sources[i], place))
        return out

    @staticmethod
    def _answer(pred, img, boxes: list[Box], src: str, place) -> DetectedPrediction:
        images = crops(img, [b.bbox for b in boxes]) if boxes else [img]
        preds = pred.predict_images(images, [src] * len(images), [place] * len(images))
        return combine(None, boxes, preds) if boxes else combine(preds[0], [], [])

    def predict_paths(self, paths: Iterable[str | Path], workers: int | None = None) -> Iterator[DetectedPrediction]:
        """Every photo under ``paths``, in input order, ``workers`` (default: one per core) at a time."""
        return self.predict_files(expand_paths(paths), workers)

    def predict_files(self, files: Iterable[Path], workers: int | None = None) -> Iterator[DetectedPrediction]:
        """Every one of ``files`` (found already: no folder expansion), in input order."""
        workers = max(1, workers or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else workers or os.cpu_count() or 1)
        local = {}

        def work(path: Path) -> DetectedPrediction:
            import threading

            key = threading.get_ident()
            if key not in local:
                local[key] = self._worker_predictor()
            return self.predict_file(path, local[key])

        with one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            window: deque = deque()
            for path in files:
                window.append(pool.submit(work, path))
                if len(window) > 2 * workers:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()


@dataclass
class Sequences:
    """Photos grouped into events (``sequences.group_events``), with each event's answer."""

    events: list
    facts: list  # PhotoFacts per photo (None for a photo that failed)
    by_photo: dict  # photo index -> its Event

    def md_fields(self, i: int) -> dict:
        """The COCO Camera Traps sequence fields MegaDetector's sequence smoothing reads, and the
        event's answer for the image's ``wildwatch`` entry."""
        ev = self.by_photo[i]
        return {"md": {"seq_id": ev.id, "seq_num_frames": len(ev.members), "frame_num": ev.frame(i),
                       "datetime": self.moment(i)},
                "answer": {"event_id": ev.id, "event_species": ev.label, "event_count": ev.count,
                           **({"event_unsure": True} if ev.unsure else {}),
                           **({"disagrees_with_event": True} if i in ev.disagrees else {}),
                           **({"time_from_file": True} if ev.time_from_file else {})}}

    def moment(self, i: int) -> str:
        t, _ = capture_moment(self.facts[i])
        return t.strftime("%Y-%m-%d %H:%M:%S")

    def md_by_photo(self) -> dict[int, dict]:
        return {i: self.md_fields(i) for i in self.by_photo}


def sequences(preds: Sequence[Prediction], gap_s: float = DEFAULT_GAP_S) -> Sequences:
    """The events of the readable photos among ``preds`` (header reads only) and their answers."""
    ok = [i for i, p in enumerate(preds) if not p.error]
    facts: list = [None] * len(preds)
    for i in ok:
        facts[i] = photo_facts(preds[i].source)
    events = group_events([camera_key(preds[i].source, facts[i]) for i in ok],
                          [capture_moment(facts[i]) for i in ok], gap_s)
    answers = [photo_answer(preds[i]) for i in ok]
    by_photo = {}
    for ev in events:
        decide(ev, answers)
        ev.members = [ok[j] for j in ev.members]
        ev.disagrees = {ok[j] for j in ev.disagrees}
        for i in ev.members:
            by_photo[i] = ev
    return Sequences(events, facts, by_photo)
