"""Stream Predictions to CSV or JSON-lines files as they come."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wildwatch.inference.predictor import ROW_FIELDS, Prediction


def done_sources(path: Path | None, fmt: str | None = None) -> set[str]:
    """Sources already written to an output file (complete rows only), for ``--resume``."""
    if path is None or not path.exists():
        return set()
    done = set()
    with open(path, newline="", encoding="utf-8") as f:
        if format_of(path, fmt) == "csv":
            for row in csv.DictReader(f):
                if row.get("source") and None not in row.values():
                    done.add(row["source"])
        else:
            for line in f:
                try:
                    done.add(json.loads(line)["source"])
                except (ValueError, KeyError):
                    pass  # a line cut by an interruption is written again
    return done


def _truncate_partial_line(path: Path) -> None:
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])


WRITER_FORMATS = ("csv", "jsonl", "json")
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}


def format_of(path: Path | None, given: str | None = None) -> str | None:
    """The format of an output: ``given`` (--format), else the file's suffix (.json: one JSON document)."""
    if given:
        return given
    return SUFFIX_FORMATS.get(path.suffix.lower(), "csv") if path is not None else None


@contextmanager
def open_writer(path: Path | None, append: bool = False, fmt: str | None = None,
                fields: list[str] | None = None) -> Iterator[Callable[[Prediction], None]]:
    """A function that writes one Prediction: CSV or JSON lines, flushed per row so an interrupted
    run keeps them (``append``: after the rows already there, for ``--resume``); or one JSON
    document (a list of rows), complete when the run ends. ``fields``: the CSV columns (default
    ``ROW_FIELDS``; ``classify --detect`` adds its own)."""
    if path is None:
        yield lambda p: None
        return
    fmt = format_of(path, fmt)
    path.parent.mkdir(parents=True, exist_ok=True)
    append = append and fmt != "json" and path.exists() and path.stat().st_size > 0
    if append:
        _truncate_partial_line(path)
    with open(path, "a" if append else "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            w = csv.DictWriter(f, fieldnames=fields or ROW_FIELDS)
            if not append:
                w.writeheader()

            def write(p: Prediction) -> None:
                w.writerow(p.to_row())
                f.flush()
        elif fmt == "json":
            f.write("[")
            first = [True]

            def write(p: Prediction) -> None:
                f.write(("\n" if first[0] else ",\n") + json.dumps(p.to_json()))
                first[0] = False
        else:

            def write(p: Prediction) -> None:
                f.write(json.dumps(p.to_json()) + "\n")
                f.flush()

        yield write
        if fmt == "json":
            f.write("\n]\n")


# ---------------------------------------------------------------- batch exports: AddaxAI's CSV, COCO Camera Traps

ADDAXAI_DETECTION_FIELDS = ("absolute_path", "relative_path", "data_type", "label", "confidence", "human_verified",
                            "bbox_left", "bbox_top", "bbox_right", "bbox_bottom", "file_height", "file_width",
                            "DateTimeOriginal", "Latitude", "Longitude", "Make", "Model",
                            # wildwatch's own, after AddaxAI's columns
                            "common_name", "iucn_status", "detector_confidence", "looks_like", "whole_photo",
                            "event_id")
ADDAXAI_FILE_FIELDS = ("absolute_path", "relative_path", "data_type", "n_detections", "max_confidence",
                       "human_verified", "file_height", "file_width", "DateTimeOriginal", "Latitude", "Longitude",
                       "Make", "Model", "label", "event_id", "event_label", "error")


def _addaxai_time(iso: str | None) -> str:
    """AddaxAI's date format, DD/MM/YY HH:MM:SS (the camera's local time), or "" without one."""
    if not iso:
        return ""
    from datetime import datetime

    return datetime.fromisoformat(iso).strftime("%d/%m/%y %H:%M:%S")


def addaxai_label(d: dict) -> str:
    """The label AddaxAI would give a detection: the species, else its detector category."""
    return d["species"] or {"unknown": "animal"}.get(d["label"], d["label"])


def write_addaxai_csv(preds, path: Path, root: Path, seqs) -> tuple[Path, Path]:
    """AddaxAI's two result tables: ``path`` one row per detection (pixel box, label, confidence:
    the species' probability where one is named, else the detector's), and ``<stem>_files.csv``
    one row per photo (detections, the largest confidence, an unreadable photo's error), with
    EXIF date, GPS, make and model. Photos in which nothing was seen are only in the second."""
    import os

    from wildwatch.inference.camtrap import photo_detections
    from wildwatch.species import species_info

    path, root = Path(path), Path(root).resolve()
    files_path = path.with_name(f"{path.stem}_files.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fd, open(files_path, "w", newline="", encoding="utf-8") as ff:
        det_w = csv.DictWriter(fd, fieldnames=list(ADDAXAI_DETECTION_FIELDS), restval="")
        file_w = csv.DictWriter(ff, fieldnames=list(ADDAXAI_FILE_FIELDS), restval="")
        det_w.writeheader()
        file_w.writeheader()
        for i, p in enumerate(preds):
            facts = seqs.facts[i] if seqs is not None and seqs.facts[i] is not None else None
            event = seqs.by_photo.get(i) if seqs is not None else None
            base = {"absolute_path": str(Path(p.source).resolve()), "data_type": "img",
                    "relative_path": Path(os.path.relpath(Path(p.source).resolve(), root)).as_posix(),
                    "human_verified": "False", "file_height": facts.height if facts else "",
                    "file_width": facts.width if facts else "", "DateTimeOriginal": _addaxai_time(p.taken_at),
                    "Latitude": p.latitude if p.latitude is not None else "",
                    "Longitude": p.longitude if p.longitude is not None else "",
                    "Make": facts.make if facts else "", "Model": facts.model if facts else "",
                    "event_id": event.id if event else ""}
            dets = [] if p.error else photo_detections(p)
            confs = []
            for d in dets:
                conf = d["confidence"] if d["species"] else d["conf"]
                confs.append(conf if conf is not None else "")
                box = _pixel_box(d["bbox"], facts)
                det_w.writerow(base | box | {
                    "label": addaxai_label(d), "confidence": "" if conf is None else conf,
                    "common_name": species_info(d["species"]).common_name if d["species"] else "",
                    "iucn_status": species_info(d["species"]).iucn_status if d["species"] else "",
                    "detector_confidence": "" if d["conf"] is None else d["conf"],
                    "looks_like": d["looks_like"], "whole_photo": str(d["whole_photo"])})
            numeric = [c for c in confs if c != ""]
            file_w.writerow(base | {"n_detections": len(dets), "max_confidence": max(numeric) if numeric else "",
                                    "label": "error" if p.error else (addaxai_label(dets[0]) if dets else "empty"),
                                    "event_label": event.label if event else "", "error": p.error or ""})
    return path, files_path


def _pixel_box(bbox, facts) -> dict:
    if facts is None or not facts.width:
        return {}
    x, y, w, h = bbox
    return {"bbox_left": round(x * facts.width), "bbox_top": round(y * facts.height),
            "bbox_right": round((x + w) * facts.width), "bbox_bottom": round((y + h) * facts.height)}


def coco_camera_traps(preds, root: Path, seqs, model_name: str) -> dict:
    """COCO Camera Traps (the LILA data sets' format): ``images`` with size, ``datetime``,
    ``location`` (the camera: folder, make, model, serial) and the sequence fields ``seq_id``,
    ``seq_num_frames``, ``frame_num``; one annotation per detection (a pixel ``bbox`` where the
    detector found one, none for a whole-photo answer) and one ``empty`` annotation per photo in
    which nothing was seen. Categories: 0 is empty, then the labels seen, sorted. Unreadable photos
    are left out and listed in ``info``."""
    import hashlib
    import os
    from datetime import datetime, timezone

    from wildwatch import __version__
    from wildwatch.inference.camtrap import photo_detections

    root = Path(root).resolve()
    images, annotations, failed = [], [], []
    labels: dict[str, int] = {"empty": 0}
    for i, p in enumerate(preds):
        if p.error:
            failed.append(f"{p.source}: {p.error}")
            continue
        facts = seqs.facts[i]
        rel = Path(os.path.relpath(Path(p.source).resolve(), root)).as_posix()
        ev = seqs.by_photo[i]
        camera = hashlib.sha256(ev.camera.encode()).hexdigest()[:12]
        images.append({"id": rel, "file_name": rel, "width": facts.width, "height": facts.height,
                       "datetime": seqs.moment(i), "location": f"camera-{camera}", "seq_id": ev.id,
                       "seq_num_frames": len(ev.members), "frame_num": ev.frame(i)})
        dets = photo_detections(p) or [None]
        for d in dets:
            name = "empty" if d is None else d["label"]
            ann = {"id": f"{rel}#{len(annotations)}", "image_id": rel,
                   "category_id": labels.setdefault(name, len(labels)), "sequence_level_annotation": False}
            if d is not None and not d["whole_photo"]:
                x, y, w, h = d["bbox"]
                ann["bbox"] = [round(x * facts.width, 1), round(y * facts.height, 1), round(w * facts.width, 1),
                               round(h * facts.height, 1)]
            if d is not None:
                ann["conf"] = d["confidence"] if d["species"] else d["conf"]
            annotations.append(ann)
    return {"info": {"version": "1.0", "description": f"wildwatch {__version__} ({model_name}) answers for the photos "
                     f"under {root}" + (f"; {len(failed)} unreadable photos left out: " + "; ".join(failed[:20])
                                        if failed else ""),
                     "date_created": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")},
            "images": images, "annotations": annotations,
            "categories": [{"id": v, "name": k} for k, v in sorted(labels.items(), key=lambda kv: kv[1])]}
