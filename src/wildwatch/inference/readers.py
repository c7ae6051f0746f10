"""Reading the camera-trap field's result files into one shape: MegaDetector batch output 1.0-1.6,
AddaxAI's results JSON, and SpeciesNet's native ``predictions.json``.

The shape is MegaDetector's (``images`` with ``file`` and ``detections`` of ``category``, ``conf``,
``bbox``), with detection categories named animal, person and vehicle. Another classifier's
answers are never dropped: they move to ``classifications_original`` (on a detection, or on the
image for SpeciesNet's image-level prediction), names spelled out, with the classifier's name.

These files come from elsewhere and are treated as hostile: the file size is bounded before it
is parsed, the top level is checked as a whole (a clear error naming the file), and each image
entry on its own: a malformed entry becomes a ``failure`` row saying what is wrong, and the batch
goes on. Image paths are checked by ``image_path``: an absolute path, or one that leaves the
folder given (``..``, a link), is a per-row error; ``image_root`` re-roots absolute paths from
another machine.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wildwatch.errors import DataError

MAX_FILE_BYTES = 1 << 30  # 1 GiB: a million photos' boxes; beyond that, split the batch
MAX_NAME = 4096
CATEGORIES = {"1": "animal", "2": "person", "3": "vehicle"}
ANIMAL_NAMES = {"animal", "unidentified animal", "animals"}
PERSON_NAMES = {"person", "human", "people"}
VEHICLE_NAMES = {"vehicle"}

Unit = Annotated[float, Field(ge=-0.01, le=1.01, allow_inf_nan=False)]


class Detection(BaseModel):
    """One box. Extra keys pass through (``classifications``, AddaxAI's ``prev_conf``...)."""

    model_config = ConfigDict(extra="allow")
    category: str = Field(max_length=32)
    conf: Unit
    bbox: list[Unit] = Field(min_length=4, max_length=4)

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, v):
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v


class ImageEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    file: str = Field(min_length=1, max_length=MAX_NAME)
    detections: list[Detection] | None = None
    failure: str | None = Field(None, max_length=10_000)


class BatchFile(BaseModel):
    """The top level of a MegaDetector (or AddaxAI) file."""

    model_config = ConfigDict(extra="allow")
    info: dict = Field(default_factory=dict)
    detection_categories: dict[str, str]
    classification_categories: dict[str, str] = Field(default_factory=dict)
    classification_category_descriptions: dict[str, str] = Field(default_factory=dict)
    images: list[Any]


class SpeciesNetDetection(BaseModel):
    model_config = ConfigDict(extra="allow")
    category: str = Field(max_length=32)
    conf: Unit
    bbox: list[Unit] = Field(min_length=4, max_length=4)


class SpeciesNetClasses(BaseModel):
    classes: list[str] = Field(default_factory=list, max_length=100)
    scores: list[float] = Field(default_factory=list, max_length=100)


class SpeciesNetPrediction(BaseModel):
    model_config = ConfigDict(extra="allow")
    filepath: str = Field(min_length=1, max_length=MAX_NAME)
    detections: list[SpeciesNetDetection] | None = None
    classifications: SpeciesNetClasses | None = None
    prediction: str | None = Field(None, max_length=1000)
    prediction_score: float | None = None
    prediction_source: str | None = Field(None, max_length=200)
    model_version: str | None = Field(None, max_length=200)
    failures: list[str] | None = None


def _problem(exc: ValidationError) -> str:
    """A pydantic error in a few words: where and what, for the first three problems."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err["loc"]) or "entry"
        parts.append(f"{where}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def load_json(path: Path) -> Any:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if size > MAX_FILE_BYTES:
        raise DataError(f"{path}: {size:,} bytes, over the limit of {MAX_FILE_BYTES:,} for a results file; "
                        "split the batch")
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not readable JSON ({str(exc)[:200]})") from None


def common_name(label: str) -> str:
    """The readable name in a Wildlife Insights / SpeciesNet prediction string
    ("uuid;mammalia;...;loxodonta africana;african elephant" -> "african elephant"); other names as they are."""
    parts = label.split(";")
    if len(parts) >= 7:
        return parts[-1].strip() or ";".join(p for p in parts[1:-1] if p).strip() or "blank"
    return label.strip()


def read_results(path: Path, keep_classifications: bool = False) -> dict:
    """Any of the three formats as a MegaDetector-shaped document (see the module). Raises DataError
    when the file as a whole cannot be read as one of them. ``keep_classifications``: leave the
    file's own classifications where they are (to read its answers rather than replace them);
    ``classification_categories`` then holds their readable names."""
    doc = load_json(path)
    if isinstance(doc, dict) and isinstance(doc.get("predictions"), list) and "images" not in doc:
        doc = from_speciesnet(doc, path)
    return normalise(doc, path, keep_classifications)


def normalise(doc: Any, path: Path, keep_classifications: bool = False) -> dict:
    if not isinstance(doc, dict):
        raise DataError(f"{path}: not a MegaDetector, AddaxAI or SpeciesNet results file (its top level is a "
                        f"{type(doc).__name__}, not an object)")
    try:
        top = BatchFile.model_validate(doc)
    except ValidationError as exc:
        raise DataError(f"{path}: not a MegaDetector batch file ({_problem(exc)}); it needs 'images' and "
                        "'detection_categories' (or SpeciesNet's 'predictions')") from None
    names = {k: common_name(v) for k, v in top.classification_categories.items()}
    for k, v in top.classification_category_descriptions.items():
        if k in names and common_name(v) and (names[k].isdigit() or not names[k]):
            names[k] = common_name(v)  # a category named by a number: its description's common name
    det_names = {k: v.strip().lower() for k, v in top.detection_categories.items()}
    classifier = str(top.info.get("classifier") or ("AddaxAI" if _is_addaxai(doc, det_names) else "a classifier"))
    images = [_image(entry, i, det_names, names, classifier, keep_classifications)
              for i, entry in enumerate(top.images)]
    if not any(n in ANIMAL_NAMES for n in det_names.values()) and not _is_addaxai(doc, det_names):
        raise DataError(f"{path}: its detection_categories {sorted(set(det_names.values()))[:5]} have no 'animal'")
    out = {k: v for k, v in doc.items() if k not in ("images", "classification_categories",
                                                      "classification_category_descriptions", "forbidden_classes")}
    out["info"] = dict(top.info)
    out["detection_categories"] = dict(CATEGORIES)
    out["images"] = images
    if keep_classifications:
        out["classification_categories"] = names
    return out


def _is_addaxai(doc: dict, det_names: dict) -> bool:
    return "unidentified animal" in det_names.values() or "forbidden_classes" in doc


def _image(entry: Any, i: int, det_names: dict, names: dict, classifier: str, keep: bool = False) -> dict:
    try:
        im = ImageEntry.model_validate(entry)
    except ValidationError as exc:
        name = entry.get("file") if isinstance(entry, dict) and isinstance(entry.get("file"), str) else None
        name = name[:MAX_NAME] if name else f"(entry {i} without a file name)"
        return {"file": name, "failure": f"malformed entry in the results file: {_problem(exc)}", "detections": None,
                "wildwatch": {"error": f"malformed entry: {_problem(exc)}"}}
    out = im.model_dump(exclude_none=False)
    if out.get("failure") is not None:
        out["detections"] = None
        return out
    dets = []
    for det in im.detections or []:
        d = _detection(det.model_dump(), det_names, names, classifier, keep)
        if d is not None:
            dets.append(d)
    out["detections"] = dets
    return out


def _detection(det: dict, det_names: dict, names: dict, classifier: str, keep: bool = False) -> dict | None:
    """A box with its category mapped to animal/person/vehicle and another classifier's answers kept.
    AddaxAI moves a classified box into a species category (its confidence becomes the species'
    and the detector's moves to ``prev_conf``): both are put back. A category the file does not
    name is dropped (it cannot be read as anything)."""
    original = []
    category = det_names.get(det["category"])
    if "prev_category" in det and category not in ANIMAL_NAMES | PERSON_NAMES | VEHICLE_NAMES:
        original.append([category or det["category"], round(float(det["conf"]), 5)])
        category = det_names.get(str(det.pop("prev_category")))
        try:
            det["conf"] = float(det.pop("prev_conf", det["conf"]))
        except (TypeError, ValueError):
            pass
        if not (isinstance(det["conf"], float) and math.isfinite(det["conf"])):
            return None
    det.pop("prev_category", None)
    det.pop("prev_conf", None)
    for c in (det.get("classifications") if keep else det.pop("classifications", None)) or []:
        if isinstance(c, (list, tuple)) and len(c) >= 2 and isinstance(c[1], (int, float)):
            name = names.get(str(c[0]), str(c[0]))[:200]
            if not original or original[0][0] != name:
                original.append([name, round(float(c[1]), 5)])
    if category in ANIMAL_NAMES:
        det["category"] = "1"
    elif category in PERSON_NAMES:
        det["category"] = "2"
    elif category in VEHICLE_NAMES:
        det["category"] = "3"
    else:
        return None
    if keep:
        det["classifications"] = [[str(c[0]), float(c[1])] for c in det.get("classifications") or []
                                  if isinstance(c, (list, tuple)) and len(c) >= 2 and isinstance(c[1], (int, float))]
        if original and not det["classifications"]:  # AddaxAI's species category, as a classification
            det["classifications_by_name"] = original
        return det
    if original:
        det["classifications_original"] = {"classifier": classifier[:200], "classifications": original[:20]}
    return det


def from_speciesnet(doc: dict, path: Path) -> dict:
    """SpeciesNet's native ``predictions.json`` as a MegaDetector-shaped document: its boxes as
    detections, its image-level prediction and top classes under ``classifications_original``."""
    images = []
    for i, entry in enumerate(doc["predictions"]):
        try:
            p = SpeciesNetPrediction.model_validate(entry)
        except ValidationError as exc:
            name = entry.get("filepath") if isinstance(entry, dict) and isinstance(entry.get("filepath"), str) else None
            images.append({"file": (name or f"(entry {i} without a file path)")[:MAX_NAME],
                           "failure": f"malformed entry in the results file: {_problem(exc)}", "detections": None})
            continue
        im: dict = {"file": p.filepath}
        name = f"SpeciesNet {p.model_version or ''}".strip()
        if p.failures and p.detections is None:
            im |= {"failure": "SpeciesNet failed: " + ", ".join(f[:100] for f in p.failures[:5]), "detections": None}
        else:  # newer files classify each box (and the whole image as category "0"): those answers are kept
            im["detections"] = [_speciesnet_box(d.model_dump(), name) for d in p.detections or []
                                if d.category != "0"]
        if p.prediction:
            classes = p.classifications or SpeciesNetClasses()
            im["classifications_original"] = {
                "classifier": name, "prediction": common_name(p.prediction), "score": p.prediction_score,
                "source": p.prediction_source,
                "classifications": [[common_name(c), round(float(s), 5)]
                                    for c, s in zip(classes.classes, classes.scores)][:5]}
        images.append(im)
    versions = {str(e.get("model_version")) for e in doc["predictions"]
                if isinstance(e, dict) and e.get("model_version")}
    return {"info": {"format_version": "1.4", "detector": "SpeciesNet's detector (MegaDetector)",
                     "classifier": "SpeciesNet " + ", ".join(sorted(versions)[:3])},
            "detection_categories": {"1": "animal", "2": "human", "3": "vehicle"}, "images": images}


def _speciesnet_box(det: dict, classifier: str) -> dict:
    """A SpeciesNet box with its own classification (processed, then raw) moved aside, by name."""
    answers = []
    processed, raw = det.pop("processed_classification", None), det.pop("raw_classifications", None)
    if isinstance(processed, dict) and isinstance(processed.get("class"), str):
        answers.append([common_name(processed["class"])[:200], _score(processed.get("score"))])
    if isinstance(raw, dict) and isinstance(raw.get("classes"), list) and isinstance(raw.get("scores"), list):
        answers += [[common_name(str(c))[:200], _score(v)] for c, v in zip(raw["classes"][:5], raw["scores"][:5])]
    for key in [k for k in det if k not in ("category", "conf", "bbox")]:
        det.pop(key)
    if answers:
        det["classifications_original"] = {"classifier": classifier, "classifications": answers}
    return det


def _score(v) -> float | None:
    return round(float(v), 5) if isinstance(v, (int, float)) and math.isfinite(v) else None


_DRIVE = re.compile(r"^[A-Za-z]:/")


def image_path(root: Path, file: str, image_root: str | None = None) -> tuple[Path | None, str, str]:
    """(the photo's path, the name to write in the output, the problem or ""): ``file`` must lead to
    a photo inside ``root``. ``image_root``: a prefix of absolute paths (from the machine the
    detector ran on) that stands for ``root``, removed before the check. Windows separators are
    read as folders."""
    name = file.replace("\\", "/")
    if image_root:
        name = name.removeprefix(image_root.replace("\\", "/").rstrip("/") + "/")
    root = Path(root).resolve()
    if _DRIVE.match(name) or name.startswith("/"):
        candidate = Path(name)
        if _DRIVE.match(name) or not candidate.resolve().is_relative_to(root):
            return None, name, ("an absolute path outside the folder given; give the folder it was under on the "
                                "detector's machine with --image-root")
        name = candidate.resolve().relative_to(root).as_posix()
    if ".." in PurePosixPath(name).parts:
        return None, name, "a path that leaves the folder given (..)"
    path = root / name
    if not path.resolve().is_relative_to(root):
        return None, name, "a path that leads outside the folder given (a link)"
    return path, name, ""
