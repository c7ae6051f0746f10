"""MegaDetector batch output (format 1.5): written for whole photos, and read, classified and
written back for MegaDetector's (or SpeciesNet's) animal boxes.

The format: https://lila.science/megadetector-output-format. ``images`` hold ``file`` (relative
to the folder the batch ran on), ``detections`` (``category`` of ``detection_categories``,
``conf``, ``bbox`` [x_min, y_min, width, height] in fractions of the image, and
``classifications``: [category, probability] pairs, most likely first) or ``failure``.
``classification_category_descriptions`` are Wildlife Insights prediction strings
(id;class;order;family;genus;species;common name, lowercase), which the MegaDetector tools parse
to smooth answers across an image or a sequence.

wildwatch adds one key per image, ``wildwatch``: the image-level answer (species and IUCN status
of the most confident animal, or "human" / "empty" / "unknown" and what the photo looks like).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

from wildwatch import __version__
from wildwatch.data.loading import ImageLoadError
from wildwatch.errors import DataError
from wildwatch.inference.predictor import Prediction
from wildwatch.species import species_info

FORMAT_VERSION = "1.5"
DETECTION_CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
DEFAULT_THRESHOLD = 0.2  # MegaDetector v5's usual confidence threshold for an animal box
CROP_MARGIN = 0.1  # each side of a box grows by this fraction of its longer side before squaring


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


def _relative(source: str, root: Path) -> str:
    return Path(os.path.relpath(Path(source).resolve(), root)).as_posix()


def _classifications(p: Prediction, index: dict) -> list:
    return [[index[t["species"]], round(float(t["probability"]), 4)] for t in p.top_k]


def image_answer(p: Prediction | None, human: bool = False) -> dict:
    """The ``wildwatch`` key of an image: what a person reading the file wants to know."""
    if p is None or p.unknown:
        answer = {"species": "human" if human else ("unknown" if p is not None else "empty")}
        if p is not None and p.looks_like_kind:
            answer |= {"looks_like": p.looks_like, "looks_like_kind": p.looks_like_kind}
        return answer
    return {"species": p.species, "common_name": p.common_name, "confidence": round(float(p.confidence), 4),
            "iucn_status": p.iucn_status, "threatened": p.threatened, **({"note": p.note} if p.note else {})}


def whole_image_json(preds: Iterable[Prediction], classes: list[str], model_name: str,
                     given: Sequence[str | Path]) -> dict:
    """MegaDetector batch output for whole-photo answers (no detector ran).

    A photo the model names gets one animal box covering it ([0, 0, 1, 1]); its ``conf`` is the
    model's probability of the top species (there is no detector confidence), and its
    ``classifications`` the top species. A photo of none of the species (another animal, a
    person, an empty scene) gets no detection; its ``wildwatch`` entry says what it looks like.
    An unreadable photo has ``failure`` and null ``detections``. ``info`` says all this."""
    preds = list(preds)
    root = image_root(given) if given else Path(".").resolve()
    cats, descriptions = categories(classes)
    index = {c: k for k, c in cats.items()}
    images = []
    for p in preds:
        im = {"file": _relative(p.source, root)}
        if p.error:
            images.append(im | {"failure": p.error, "detections": None})
            continue
        dets = [] if p.unknown else [{"category": "1", "conf": round(float(p.confidence), 4),
                                      "bbox": [0.0, 0.0, 1.0, 1.0], "classifications": _classifications(p, index)}]
        images.append(im | {"detections": dets, "wildwatch": image_answer(p)})
    doc = {"info": {"format_version": FORMAT_VERSION, "detector": "none (whole-image classification)",
                    "classifier": f"wildwatch {__version__} ({model_name})", "classification_completion_time": _now(),
                    "classifier_metadata": {
                        "whole_image": True, "image_root": str(root),
                        "conf": "no detector ran: an animal box covers each photo the classifier names, and its "
                                "conf is the probability of the top species",
                        "unknown": "photos of none of the species (other animals, people, empty scenes) have no "
                                   "detection; the image's 'wildwatch' entry says what they look like"}},
           "detection_categories": dict(DETECTION_CATEGORIES), "classification_categories": cats, "images": images}
    if descriptions:
        doc["classification_category_descriptions"] = descriptions
    return doc


# ---------------------------------------------------------------- classifying MegaDetector's boxes


def square_crop_box(bbox: Sequence[float], width: int, height: int, margin: float = CROP_MARGIN) -> tuple[int, ...]:
    """Pixel box (left, top, right, bottom) of a detection: its longer side grown by ``margin`` on
    each side, made square around the box's centre, kept inside the image."""
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = (x + w / 2) * width, (y + h / 2) * height
    side = max(w * width, h * height) * (1 + 2 * margin)
    side = max(1.0, min(side, float(max(width, height))))
    left = min(max(0.0, cx - side / 2), max(0.0, width - side))
    top = min(max(0.0, cy - side / 2), max(0.0, height - side))
    return (int(round(left)), int(round(top)), int(round(min(width, left + side))), int(round(min(height, top + side))))


@dataclass
class DetectionSummary:
    images: int
    boxes_classified: int
    images_failed: int


def _category_ids(doc: dict) -> tuple[set[str], set[str]]:
    """The detection categories that are animals, and those that are people (by name, any version)."""
    cats = {k: str(v).lower() for k, v in doc.get("detection_categories", {}).items()}
    return ({k for k, v in cats.items() if v == "animal"}, {k for k, v in cats.items() if v in ("person", "human")})


def read_batch_file(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable MegaDetector batch file ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or "detection_categories" not in doc:
        raise DataError(f"{path}: not a MegaDetector batch file (it needs 'images' and 'detection_categories')")
    if not _category_ids(doc)[0]:
        raise DataError(f"{path}: its detection_categories have no 'animal'")
    return doc


def classify_detections(doc: dict, root: Path, predictor, threshold: float = DEFAULT_THRESHOLD,
                        batch_size: int = 32, model_name: str = "", progress=None) -> tuple[dict, DetectionSummary]:
    """Classify every animal box of ``doc`` with ``conf`` >= ``threshold`` (a square crop with a
    margin) and write the answers into ``doc``: ``classifications`` on each such box (none for a
    crop that is none of the species), the ``wildwatch`` image answer, and the categories. Person
    and vehicle boxes pass through; empty images stay empty; an image that cannot be read keeps
    its boxes and says why in ``wildwatch.error``."""
    animal_ids, person_ids = _category_ids(doc)
    cats, descriptions = categories(predictor.classes)
    index = {c: k for k, c in cats.items()}
    pending: list[tuple[dict, dict, Image.Image]] = []  # (image, detection, crop)
    answers: dict[int, list[tuple[dict, Prediction]]] = {}
    summary = DetectionSummary(len(doc["images"]), 0, 0)

    def flush():
        preds = predictor.predict_images([c for *_, c in pending], [im["file"] for im, _, _ in pending])
        for (im, det, _), p in zip(pending, preds):
            det.pop("classifications", None)
            if not p.unknown:
                det["classifications"] = _classifications(p, index)
            answers.setdefault(id(im), []).append((det, p))
            summary.boxes_classified += 1
        pending.clear()

    previous = doc.get("info", {}).get("classifier")
    for im in doc["images"]:
        for det in im.get("detections") or []:  # another classifier's answers (SpeciesNet's) use other categories
            det.pop("classifications", None)
        boxes = [d for d in (im.get("detections") or []) if d.get("category") in animal_ids
                 and float(d.get("conf", 0)) >= threshold]
        if boxes:
            try:
                img, _ = predictor.read(Path(root) / im["file"])
            except ImageLoadError as exc:
                im["wildwatch"] = {"error": str(exc)}
                summary.images_failed += 1
                continue
            for det in boxes:
                pending.append((im, det, img.crop(square_crop_box(det["bbox"], img.width, img.height))))
            if len(pending) >= batch_size:
                flush()
        if progress is not None:
            progress()
    if pending:
        flush()
    for im in doc["images"]:
        if "wildwatch" in im or im.get("failure"):
            continue
        found = [p for _, p in answers.get(id(im), []) if not p.unknown]
        human = any(d.get("category") in person_ids and float(d.get("conf", 0)) >= threshold
                    for d in im.get("detections") or [])
        best = max(found, key=lambda p: p.confidence) if found else None
        im["wildwatch"] = image_answer(best if best else (answers[id(im)][0][1] if id(im) in answers else None), human)
    doc["classification_categories"] = cats
    if descriptions:
        doc["classification_category_descriptions"] = descriptions
    else:
        doc.pop("classification_category_descriptions", None)
    info = doc.setdefault("info", {})
    info["format_version"] = str(max(float(info.get("format_version", FORMAT_VERSION)), float(FORMAT_VERSION)))
    info["classifier"] = f"wildwatch {__version__} ({model_name})"
    info["classification_completion_time"] = _now()
    info["classifier_metadata"] = {"detection_threshold": threshold, "crop": f"square, margin {CROP_MARGIN:g} of the "
                                   "box's longer side on each side", "image_root": str(root),
                                   "unknown": "animal boxes showing none of the species have no classifications",
                                   **({"replaced_classifier": previous} if previous else {})}
    return doc, summary
