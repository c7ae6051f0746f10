"""``wildwatch sort``: photos copied (or hard-linked) into one folder per answer, people blurred on
request, so that a team can look through a card by species and share photos safely.

Folders: one per species named with at least ``min_confidence`` (``lion/``...), ``unsure/`` (a
species named below it), ``unknown/`` (an animal of none of the species), ``person/``,
``vehicle/``, ``empty/``; with a species list (``--species`` here, or rows of ``classify
--species``), ``not_on_list/`` for the species named that are not on it. Precedence: a named
species, unsure, not on the list, unknown, person, vehicle, empty (a photo of a lion and a person
goes to ``lion/``). Each photo keeps its path under the folder classified.

Results: a MegaDetector file (wildwatch's, or any other detector's with classifications), or
wildwatch's rows (CSV, JSON lines, JSON). Their paths are outside text: a photo outside ``root``
is refused (a per-photo error), never read.

``blur_people``: the copy of a photo with a person is blurred over each person box (grown by a
margin), or over the whole photo when a person was seen without a box. Boxes the classifier
could not place (it saw an object or a scene where the detector found something) are blurred
too: a person the classifier missed is one of them. Blurred copies are new JPEGs without the
original's EXIF (no GPS position travels with a shared photo).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageFilter

from wildwatch.data.loading import ImageLoadError, load_image
from wildwatch.errors import DataError, UsageError
from wildwatch.inference.readers import MAX_FILE_BYTES, image_path, load_json, read_results

DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_BOX_THRESHOLD = 0.2
PERSON_MARGIN = 0.15  # each side of a person box grows by this fraction of its size before blurring


@dataclass
class SortItem:
    """One photo of the results: its path (None when refused), where it came from, and what it shows."""

    name: str  # the path under the root, as it is written in the sorted tree
    path: Path | None
    species: str = ""  # the most confident species named
    confidence: float = 0.0
    kinds: set = field(default_factory=set)  # "uncertain", "not_on_list", "unknown", "person", "vehicle" seen
    person_boxes: list = field(default_factory=list)  # people, and boxes the classifier could not place
    person_without_box: bool = False
    error: str = ""


@dataclass
class SortSummary:
    photos: int = 0
    folders: Counter = field(default_factory=Counter)
    blurred: int = 0
    errors: list = field(default_factory=list)

    def line(self, dest: Path) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.folders.items(), key=lambda kv: (-kv[1], kv[0])))
        return (f"{self.photos} photos sorted into {dest} ({parts or 'none'}); {self.blurred} with people blurred; "
                f"{len(self.errors)} errors" + (f" (e.g. {self.errors[0]})" if self.errors else ""))


def folder_of(item: SortItem, min_confidence: float, species: frozenset[str] | None) -> str:
    if item.species:
        if species is not None and item.species not in species:
            return "not_on_list"
        return item.species if item.confidence >= min_confidence else "unsure"
    # an answer between two species goes with the unsure ones
    return next((k.replace("uncertain", "unsure") for k in ("uncertain", "not_on_list", "unknown", "person", "vehicle")
                 if k in item.kinds), "empty")


# ---------------------------------------------------------------- reading the results


def read_items(results: Path, root: Path | None,
               threshold: float = DEFAULT_BOX_THRESHOLD) -> tuple[list[SortItem], Path]:
    """The photos of a results file and the folder their paths are under (``root``, else the one
    the results name, else the current folder)."""
    results = Path(results)
    if results.suffix.lower() == ".csv":
        return _row_items(_csv_rows(results), root), (root or Path.cwd()).resolve()
    if results.suffix.lower() in (".jsonl", ".ndjson"):
        return _row_items(_jsonl_rows(results), root), (root or Path.cwd()).resolve()
    doc = load_json(results)
    if isinstance(doc, list):
        return _row_items(doc, root), (root or Path.cwd()).resolve()
    md = read_results(results, keep_classifications=True)
    meta = md["info"].get("classifier_metadata")
    named_root = meta.get("image_root") if isinstance(meta, dict) and isinstance(meta.get("image_root"), str) else None
    base = Path(root or named_root or results.parent).resolve()
    names = md.get("classification_categories") or {}
    return [_md_item(im, base, names, threshold) for im in md["images"]], base


def _csv_rows(path: Path) -> Iterator[dict]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: over the limit of {MAX_FILE_BYTES:,} bytes for a results file")
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for key in ("detections", "top_k"):
                if key in row:
                    try:
                        row[key] = json.loads(row[key] or "[]")
                    except ValueError:
                        row[key] = []
            yield row


def _jsonl_rows(path: Path) -> Iterator[dict]:
    if path.stat().st_size > MAX_FILE_BYTES:
        raise DataError(f"{path}: over the limit of {MAX_FILE_BYTES:,} bytes for a results file")
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except ValueError:
                continue  # a line cut by an interruption


def _is_true(v) -> bool:
    return v is True or str(v).lower() == "true"


def _row_items(rows, root: Path | None) -> list[SortItem]:
    base = (root or Path.cwd()).resolve()
    items = []
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("source"), str):
            continue
        path, name, problem = image_path(base, row["source"])
        item = SortItem(name, path, error=problem and f"{row['source']}: {problem}")
        if row.get("error"):
            item.error = f"{row['source']}: not classified ({row['error']})"
        dets = row.get("detections") if isinstance(row.get("detections"), list) else None
        for d in dets or []:
            if isinstance(d, dict):
                _add_detection(item, d.get("label"), d.get("kind"), d.get("bbox"), d.get("whole_photo"),
                               d.get("species") or "", d.get("confidence"), str(d.get("looks_like_kind") or ""))
        if dets is None and not item.error:  # a row of classify without --detect: the whole photo's answer
            kind = row.get("looks_like_kind") or ""
            if row.get("off_list"):  # classify --species: named as a species that is not on the list
                item.kinds.add("not_on_list")
            elif not _is_true(row.get("unknown")) and row.get("species"):
                _add_detection(item, row["species"], "animal", None, True, row["species"], row.get("confidence"))
            elif kind in ("animal", "person", "vehicle"):
                label = "unknown" if kind == "animal" else kind
                _add_detection(item, label, kind, None, True, "", None)
        items.append(item)
    return items


def folder_name(name: str) -> str:
    """A species name from a results file as a safe folder name ("African elephant" -> "african_elephant")."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:64]


def _add_detection(item: SortItem, label, kind, bbox, whole_photo, species: str, confidence,
                   looks_like_kind: str = "") -> None:
    species = folder_name(species) if isinstance(species, str) else ""
    if species in ("unknown", "uncertain", "empty", "blank", "animal", "person", "human", "vehicle"):
        label, species = {"human": "person", "blank": "empty", "animal": "unknown"}.get(species, species), ""
    if species:
        try:
            conf = float(confidence or 0.0)
        except (TypeError, ValueError):
            conf = 0.0
        if conf >= item.confidence or not item.species:
            item.species, item.confidence = species, conf
    elif label in ("uncertain", "unknown", "person", "vehicle"):
        item.kinds.add(label)
    unplaced = kind == "animal" and not species and looks_like_kind not in ("", "animal") and not whole_photo
    if kind == "person" or label == "person" or unplaced:
        try:
            box = [min(max(float(v), 0.0), 1.0) for v in bbox] if isinstance(bbox, list) and len(bbox) == 4 else None
        except (TypeError, ValueError):
            box = None
        if whole_photo or box is None:
            item.person_without_box = True  # no usable box: the whole photo is blurred
        else:
            item.person_boxes.append(box)


def _md_item(im: dict, base: Path, names: dict, threshold: float) -> SortItem:
    path, name, problem = image_path(base, im["file"])
    item = SortItem(name, path, error=problem and f"{im['file']}: {problem}")
    if im.get("failure") or (im.get("wildwatch") or {}).get("error"):
        item.error = item.error or f"{im['file']}: {im.get('failure') or im['wildwatch']['error']}"
        return item
    whole = (im.get("wildwatch") or {}) if isinstance(im.get("wildwatch"), dict) else {}
    for d in im.get("detections") or []:
        if float(d["conf"]) < threshold:
            continue
        kind = {"1": "animal", "2": "person", "3": "vehicle"}[d["category"]]
        species, conf = "", None
        if d.get("classifications"):
            species, conf = names.get(str(d["classifications"][0][0]), ""), d["classifications"][0][1]
        elif d.get("classifications_by_name"):
            species, conf = d["classifications_by_name"][0]
        is_whole = list(d["bbox"]) == [0.0, 0.0, 1.0, 1.0]
        label = "unknown" if kind == "animal" and not species else kind
        _add_detection(item, label, kind, d["bbox"], is_whole, species, conf, str(d.get("looks_like_kind") or ""))
    if whole.get("species") == "human" and not item.person_boxes:
        item.person_without_box = True
    return item


# ---------------------------------------------------------------- writing the sorted tree


def blur_people(img: Image.Image, boxes: Sequence[Sequence[float]], whole: bool) -> Image.Image:
    """``img`` with each person box (grown by PERSON_MARGIN) blurred beyond recognition, or all of it."""
    img = img.convert("RGB")
    regions = [(0, 0, img.width, img.height)] if whole else []
    for x, y, w, h in boxes:
        mx, my = w * PERSON_MARGIN, h * PERSON_MARGIN
        left, top = max(0, round((x - mx) * img.width)), max(0, round((y - my) * img.height))
        right = min(img.width, round((x + w + mx) * img.width))
        bottom = min(img.height, round((y + h + my) * img.height))
        if right > left and bottom > top:
            regions.append((left, top, right, bottom))
    for region in regions:
        part = img.crop(region)
        side = max(part.width, part.height)
        # pixelate to about 12 blocks across, then blur the blocks: no face or shape survives either step
        small = part.resize((max(1, part.width * 12 // side), max(1, part.height * 12 // side)),
                            Image.Resampling.BILINEAR)
        blocks = small.resize(part.size, Image.Resampling.NEAREST)
        img.paste(blocks.filter(ImageFilter.GaussianBlur(max(2, side // 24))), region)
    return img


def place(item: SortItem, target: Path, link: bool, blur: bool) -> bool:
    """Copy, hard-link or write the blurred copy of one photo; True when it was blurred."""
    source = item.path
    if source is None:  # a path the results file may not name (sort_photos reports it as an error)
        raise ImageLoadError(item.name, "not read: its path was refused")
    target.parent.mkdir(parents=True, exist_ok=True)
    if blur and (item.person_boxes or item.person_without_box):
        img = blur_people(load_image(source), item.person_boxes, item.person_without_box)
        img.save(target.with_suffix(".jpg") if target.suffix.lower() not in (".jpg", ".jpeg") else target,
                 quality=90)
        return True
    if target.exists():
        target.unlink()
    if link:
        try:
            os.link(source, target)
            return False
        except OSError:
            pass  # another file system, or links not allowed: a copy
    shutil.copy2(source, target)
    return False


def sort_photos(results: Path, dest: Path, root: Path | None = None, min_confidence: float = DEFAULT_MIN_CONFIDENCE,
                species: frozenset[str] | None = None, link: bool = False, blur: bool = False,
                threshold: float = DEFAULT_BOX_THRESHOLD) -> SortSummary:
    """Sort the photos of ``results`` into ``dest`` (see the module); a photo that cannot be read
    or placed is an error in the summary, and the rest go on."""
    items, base = read_items(results, root, threshold)
    dest = Path(dest)
    if dest.resolve().is_relative_to(base) and any(i.path and i.path.resolve().is_relative_to(dest.resolve())
                                                   for i in items):
        raise UsageError(f"{dest}: the photos to sort are already inside it; choose another destination")
    summary = SortSummary()
    for item in items:
        if item.error or item.path is None:
            summary.errors.append(item.error)
            continue
        folder = folder_of(item, min_confidence, species)
        try:
            summary.blurred += place(item, dest / folder / item.name, link, blur)
        except (OSError, ImageLoadError) as exc:
            summary.errors.append(f"{item.name}: {exc}")
            continue
        summary.photos += 1
        summary.folders[folder] += 1
    return summary
