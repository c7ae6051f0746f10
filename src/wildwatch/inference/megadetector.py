"""MegaDetector batch output (format 1.5): written from wildwatch's answers (whole photos, or the
built-in detector's boxes), and read, classified and written back for another detector's boxes
(MegaDetector's, SpeciesNet's, AddaxAI's; see ``readers``).

The format: https://lila.science/megadetector-output-format. ``images`` hold ``file`` (relative
to the folder the batch ran on), ``detections`` (``category`` of ``detection_categories``,
``conf``, ``bbox`` [x_min, y_min, width, height] in fractions of the image, and
``classifications``: [category, probability] pairs, most likely first) or ``failure``.
``classification_category_descriptions`` are Wildlife Insights prediction strings
(id;class;order;family;genus;species;common name, lowercase), which the MegaDetector tools parse
to smooth answers across an image or a sequence.

Every animal is kept: a box of an animal of none of the species is an ``animal`` detection
without classifications (its ``looks_like`` says what it resembles), a person is ``person``, a
vehicle ``vehicle``; a photo has no detection only when nothing was seen. wildwatch adds, per
image, ``wildwatch`` (the image-level answer) and, when photos are grouped into sequences, the
COCO Camera Traps fields ``seq_id``, ``seq_num_frames``, ``frame_num`` and ``datetime`` that
MegaDetector's sequence-level smoothing reads.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from wildwatch import __version__
from wildwatch.data.loading import ImageLoadError
from wildwatch.inference.camtrap import photo_detections
from wildwatch.inference.crops import CROP_MARGIN, crops, decode_for_crops, square_crop_box  # noqa: F401
from wildwatch.inference.prediction import Prediction
from wildwatch.inference.readers import CATEGORIES, image_path
from wildwatch.species import species_info

FORMAT_VERSION = "1.5"
DETECTION_CATEGORIES = dict(CATEGORIES)
CATEGORY_OF_KIND = {"animal": "1", "person": "2", "vehicle": "3"}
DEFAULT_THRESHOLD = 0.2  # MegaDetector v5's usual confidence threshold for an animal box
# the conf of a whole-photo box for what the classifier saw without naming a species (an animal
# of another species, a person, a vehicle): no detector measured it; above the tools' usual 0.1-0.2
WHOLE_PHOTO_UNNAMED_CONF = 0.5


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def prediction_string(key: str) -> str:
    """A class as the seven-token, lowercase string that Wildlife Insights and the MegaDetector tools
    read ("id;class;order;family;genus;species;common name"); the id is wildwatch's own, stable per
    class (a UUID5 of its name), not a Wildlife Insights taxon id. Empty when the class has no taxonomy."""
    info = species_info(key)
    if not info.taxonomy:
        return ""
    uid = uuid.uuid5(uuid.NAMESPACE_URL, f"https://wildwatch/classes/{key}")
    return f"{uid};{info.taxonomy};{info.common_name.lower().replace(';', ',')}".lower()


def categories(classes: Sequence[str]) -> tuple[dict, dict | None]:
    """(classification_categories, their descriptions, or None when a class has no taxonomy)."""
    cats = {str(i): c for i, c in enumerate(classes)}
    descriptions = {k: prediction_string(c) for k, c in cats.items()}
    return cats, (descriptions if all(descriptions.values()) else None)


def image_root(paths: Sequence[str | Path]) -> Path:
    """The folder ``file`` names are relative to: the one folder given, else the deepest folder
    holding everything that was given (not the deepest holding every photo)."""
    resolved = [Path(p).resolve() for p in paths]
    if len(resolved) == 1:
        return resolved[0] if resolved[0].is_dir() else resolved[0].parent
    return Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in resolved]))


def relative(source: str, root: Path) -> str:
    return Path(os.path.relpath(Path(source).resolve(), root)).as_posix()


def _classifications(top_k: Iterable[dict], index: dict) -> list:
    return [[index[t["species"]], round(float(t["probability"]), 4)] for t in top_k if t["species"] in index]


def image_answer(p: Prediction | None, human: bool = False) -> dict:
    """The ``wildwatch`` key of an image: what a person reading the file wants to know."""
    if p is None or p.unknown:
        answer = {"species": "human" if human else ("unknown" if p is not None else "empty")}
        if p is not None and p.looks_like_kind:
            answer |= {"looks_like": p.looks_like, "looks_like_kind": p.looks_like_kind}
        return answer
    return {"species": p.species, "common_name": p.common_name, "confidence": round(float(p.confidence), 4),
            "iucn_status": p.iucn_status, "threatened": p.threatened, **({"note": p.note} if p.note else {}),
            **({"candidates": list(p.candidates)} if p.uncertain else {})}


def md_detection(d: dict, index: dict) -> dict:
    """A wildwatch detection (``camtrap.box_entry``) as a MegaDetector one."""
    conf = d["conf"]
    if conf is None:  # a whole-photo box: no detector measured it
        conf = d["confidence"] if d["confidence"] is not None else WHOLE_PHOTO_UNNAMED_CONF
    out = {"category": CATEGORY_OF_KIND.get(d["kind"], "1"), "conf": round(float(conf), 4), "bbox": list(d["bbox"])}
    if d["species"] or d["label"] == "uncertain":  # uncertain: both species it is between, with their probabilities
        out["classifications"] = _classifications(d["top_k"], index)
    else:  # what the classifier saw instead: an animal it names, a person, a vehicle, a scene or an object
        out |= {k: d[k] for k in ("looks_like", "looks_like_kind") if d.get(k)}
    return out


def predictions_json(preds: Iterable[Prediction], classes: list[str], model_name: str, given: Sequence[str | Path],
                     detector: dict | None = None, events: dict | None = None) -> dict:
    """MegaDetector batch output for wildwatch's own answers: the built-in detector's boxes
    (``detector``: its name and settings) or, without a detector, whole-photo boxes ([0, 0, 1, 1])
    whose ``conf`` is the probability of the named species (WHOLE_PHOTO_UNNAMED_CONF for an
    unnamed animal, a person or a vehicle). An unreadable photo has ``failure`` and null
    ``detections``. ``events`` (``sequences.events_by_photo``) adds the sequence fields."""
    root = image_root(given) if given else Path.cwd()
    cats, descriptions = categories(classes)
    index = {c: k for k, c in cats.items()}
    images = []
    for i, p in enumerate(preds):
        im: dict[str, Any] = {"file": relative(p.source, root)}
        if p.error:
            images.append(im | {"failure": p.error, "detections": None})
            continue
        im["detections"] = [md_detection(d, index) for d in photo_detections(p)]
        count = getattr(p, "count", None)  # a DetectedPrediction's animals per species
        im["wildwatch"] = image_answer(p) | ({"count": dict(count)} if count else {})
        if events is not None and i in events:
            im |= events[i]["md"]
            im["wildwatch"] |= events[i]["answer"]
        images.append(im)
    if detector is None:
        meta = {"whole_image": True, "image_root": str(root),
                "conf": "no detector ran: a box covers each photo the classifier names (conf: the probability of "
                        f"the top species) or sees an animal, person or vehicle in without naming it (conf "
                        f"{WHOLE_PHOTO_UNNAMED_CONF}, category animal, person or vehicle)",
                "unknown": "an animal of none of the species is an animal box without classifications; its "
                           "'looks_like' and the image's 'wildwatch' entry say what it looks like"}
    else:
        meta = {"whole_image": False, "image_root": str(root), **detector,
                "unknown": "animal boxes showing none of the species have no classifications ('looks_like' says "
                           "what they resemble); a photo in which the detector found no box keeps a whole-photo "
                           "box when the classifier names a species or what the photo shows"}
    doc = {"info": {"format_version": FORMAT_VERSION,
                    "detector": detector["detector"] if detector else "none (whole-image classification)",
                    "classifier": f"wildwatch {__version__} ({model_name})", "classification_completion_time": _now(),
                    "classifier_metadata": meta},
           "detection_categories": dict(DETECTION_CATEGORIES), "classification_categories": cats, "images": images}
    if descriptions:
        doc["classification_category_descriptions"] = descriptions
    return doc


# ---------------------------------------------------------------- classifying another detector's boxes


@dataclass
class DetectionSummary:
    images: int
    boxes_classified: int
    images_failed: int


def _boxes(im: dict, threshold: float) -> list[dict]:
    return [d for d in (im.get("detections") or []) if d["category"] == "1" and float(d["conf"]) >= threshold]


def classify_detections(doc: dict, root: Path, predictor, threshold: float = DEFAULT_THRESHOLD,
                        batch_size: int = 32, model_name: str = "", progress=None,
                        image_root_given: str | None = None) -> tuple[dict, DetectionSummary]:
    """Classify every animal box of ``doc`` (as ``readers.read_results`` gives it) with ``conf`` >=
    ``threshold``, on a square crop with a margin cut from a decode with the detail the classifier
    can use (``crops.decode_for_crops``), and write the answers into ``doc``: ``classifications``
    on each such box (none for a crop that is none of the species), the ``wildwatch`` image
    answer, and the categories. Person and vehicle boxes pass through; empty images stay empty;
    an image that cannot be read, or whose path leaves ``root``, keeps its boxes and says why in
    ``wildwatch.error``."""
    cats, descriptions = categories(predictor.classes)
    index = {c: k for k, c in cats.items()}
    pending: list[tuple[dict, dict, object]] = []  # (image, detection, crop)
    answers: dict[int, list[Prediction]] = {}
    summary = DetectionSummary(len(doc["images"]), 0, 0)

    def flush():
        preds = predictor.predict_images([c for *_, c in pending], [im["file"] for im, _, _ in pending])
        for (im, det, _), p in zip(pending, preds):
            if not p.unknown:
                det["classifications"] = _classifications(p.top_k, index)
            else:
                det |= {k: v for k, v in (("looks_like", p.looks_like), ("looks_like_kind", p.looks_like_kind)) if v}
            answers.setdefault(id(im), []).append(p)
            summary.boxes_classified += 1
        pending.clear()

    for im in doc["images"]:
        if "wildwatch" in im or im.get("failure"):
            summary.images_failed += "wildwatch" in im
            continue
        path, name, problem = image_path(root, im["file"], image_root_given)
        if problem or path is None:
            im["wildwatch"] = {"error": f"{im['file']}: {problem}; not read"}
            summary.images_failed += 1
            continue
        im["file"] = name
        boxes = _boxes(im, threshold)
        if boxes:
            try:
                img = decode_for_crops(path, [d["bbox"] for d in boxes], predictor.preprocess.image_size)
            except ImageLoadError as exc:
                im["wildwatch"] = {"error": str(exc)}
                summary.images_failed += 1
                continue
            pending += [(im, d, c) for d, c in zip(boxes, crops(img, [d["bbox"] for d in boxes]))]
            if len(pending) >= batch_size:
                flush()
        if progress is not None:
            progress()
    if pending:
        flush()
    _image_answers(doc, answers, threshold)
    _stamp(doc, cats, descriptions, threshold, root, model_name, image_root_given)
    return doc, summary


def _image_answers(doc: dict, answers: dict, threshold: float) -> None:
    for im in doc["images"]:
        if "wildwatch" in im or im.get("failure"):
            continue
        mine = answers.get(id(im), [])
        found = [p for p in mine if p.named] or [p for p in mine if p.uncertain]
        human = any(d["category"] == "2" and float(d["conf"]) >= threshold for d in im.get("detections") or [])
        best = max(found, key=lambda p: p.confidence) if found else None
        im["wildwatch"] = image_answer(best if best else (answers[id(im)][0] if id(im) in answers else None), human)


def _stamp(doc: dict, cats: dict, descriptions: dict | None, threshold: float, root: Path, model_name: str,
           image_root_given: str | None) -> None:
    doc["classification_categories"] = cats
    if descriptions:
        doc["classification_category_descriptions"] = descriptions
    else:
        doc.pop("classification_category_descriptions", None)
    info = doc.setdefault("info", {})
    previous = info.get("classifier")
    try:
        version = max(float(info.get("format_version", FORMAT_VERSION)), float(FORMAT_VERSION))
    except (TypeError, ValueError):
        version = float(FORMAT_VERSION)
    info["format_version"] = f"{version:.1f}"
    info["classifier"] = f"wildwatch {__version__} ({model_name})"
    info["classification_completion_time"] = _now()
    info["classifier_metadata"] = {
        "detection_threshold": threshold, "image_root": str(root),
        "crop": f"square, margin {CROP_MARGIN:g} of the box's longer side on each side, from a decode with at least "
                "twice the classifier's input side per crop where the photo has it (full resolution for small boxes)",
        "unknown": "animal boxes showing none of the species have no classifications ('looks_like' says what "
                   "they resemble)",
        **({"previous_classifier": previous, "previous_answers": "kept under classifications_original"}
           if previous else {}),
        **({"image_root_replaced": image_root_given} if image_root_given else {})}
