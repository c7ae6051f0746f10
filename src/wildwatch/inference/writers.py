"""Stream Predictions to CSV or JSON-lines files as they come."""

from __future__ import annotations

import csv
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wildwatch.errors import UsageError
from wildwatch.inference.predictor import ROW_FIELDS, Prediction


def partial_path(path: Path) -> Path:
    """Where the rows of a ``.json`` output go while the run lasts (JSON lines, resumable); the JSON
    document is written from them, atomically, at the end."""
    return path.with_name(path.name + ".partial.jsonl")


def done_sources(path: Path | None, fmt: str | None = None) -> set[str]:
    """Sources already written to an output file (complete rows only), for ``--resume``; for a
    ``.json`` output, those of the finished document and of its partial rows."""
    if path is None:
        return set()
    fmt = format_of(path, fmt)
    if fmt == "json":
        done = done_sources(partial_path(path), "jsonl")
        if path.exists() and path.stat().st_size:
            try:
                done |= {r["source"] for r in json.loads(path.read_text(encoding="utf-8"))}
            except (ValueError, TypeError, KeyError):
                raise UsageError(f"{path}: not a JSON list of rows written by wildwatch; cannot resume it") from None
        return done
    if not path.exists():
        return set()
    done = set()
    with open(path, newline="", encoding="utf-8") as f:
        if fmt == "csv":
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


def has_content(path: Path, fmt: str | None = None) -> bool:
    """Whether writing ``path`` would replace something: a non-empty file, a non-empty folder, or
    the partial rows of an interrupted ``.json`` run."""
    if path.is_dir():
        return any(path.iterdir())
    if format_of(path, fmt) == "json" and partial_path(path).exists():
        return True
    return path.exists() and path.stat().st_size > 0


def write_atomic(path: Path, text: str) -> None:
    """``path`` holds either its old content or all of ``text``, never a part (an interruption
    while writing leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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
    run keeps them (``append``: after the rows already there, for ``--resume``). A ``.json``
    output (one JSON document, a list of rows) is written as JSON lines beside it while the run
    lasts, and as the document, atomically, when it ends; an interrupted run leaves the earlier
    document as it was and its partial rows for ``--resume``. ``fields``: the CSV columns (default
    ``ROW_FIELDS``; ``classify --detect`` adds its own)."""
    if path is None:
        yield lambda p: None
        return
    fmt = format_of(path, fmt)
    if fmt == "json":
        partial = partial_path(path)
        with open_writer(partial, append=append, fmt="jsonl") as write:
            yield write
        _finish_json(path, partial, keep=append)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    append = append and path.exists() and path.stat().st_size > 0
    if append:
        _truncate_partial_line(path)
        append = path.stat().st_size > 0  # a header cut by an interruption is written again
        if append and fmt == "csv":
            _same_columns(path, fields or ROW_FIELDS)
    with open(path, "a" if append else "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
            w = csv.DictWriter(f, fieldnames=fields or ROW_FIELDS)
            if not append:
                w.writeheader()

            def write(p: Prediction) -> None:
                w.writerow(p.to_row())
                f.flush()
        else:

            def write(p: Prediction) -> None:
                f.write(json.dumps(p.to_json()) + "\n")
                f.flush()

        yield write


def _same_columns(path: Path, fields: list[str]) -> None:
    """A resumed CSV gets rows of the columns it has (``--detect`` adds its own), or none at all."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if header != list(fields):
        ran = "with" if "detections" in header else "without"
        raise UsageError(f"{path}: its columns are not this run's (it was written {ran} --detect, or by another "
                         "wildwatch version); resume it with the options it was written with, or add --overwrite "
                         "to replace it")


def _finish_json(path: Path, partial: Path, keep: bool) -> None:
    """The JSON document: the rows already in ``path`` (``keep``, a resumed run) and the partial rows."""
    rows = json.loads(path.read_text(encoding="utf-8")) if keep and path.exists() and path.stat().st_size else []
    if partial.exists():
        with open(partial, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.endswith("\n")]
    write_atomic(path, "[" + ",\n".join(json.dumps(r) for r in rows) + ("\n]\n" if rows else "]\n"))
    partial.unlink(missing_ok=True)


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


def addaxai_files_path(path: Path) -> Path:
    """AddaxAI's per-photo table, beside the per-detection one at ``path``."""
    return path.with_name(f"{path.stem}_files.csv")


def write_addaxai_csv(preds, path: Path, root: Path, seqs) -> tuple[Path, Path]:
    """AddaxAI's two result tables: ``path`` one row per detection (pixel box, label, confidence:
    the species' probability where one is named, else the detector's), and ``<stem>_files.csv``
    one row per photo (detections, the largest confidence, an unreadable photo's error), with
    EXIF date, GPS, make and model. Photos in which nothing was seen are only in the second. Both
    are written atomically when the run ends: an interruption leaves the earlier tables whole."""
    import io
    import os

    from wildwatch.inference.camtrap import photo_detections
    from wildwatch.species import species_info

    path, root = Path(path), Path(root).resolve()
    files_path = addaxai_files_path(path)
    fd, ff = io.StringIO(newline=""), io.StringIO(newline="")
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
    write_atomic(files_path, ff.getvalue())
    write_atomic(path, fd.getvalue())
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
