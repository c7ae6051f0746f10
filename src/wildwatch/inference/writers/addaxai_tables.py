"""AddaxAI's result tables: one row per detection, and ``<stem>_files.csv`` one row per photo."""

from __future__ import annotations

import csv
from pathlib import Path

from wildwatch.inference.writers import Batch, Writer, register_writer, write_atomic


@register_writer
class AddaxAIWriter(Writer):
    name = "addaxai"
    title = "AddaxAI CSV"
    help = "AddaxAI's per-detection CSV, and F_files.csv per photo"
    output = "a .csv file"
    per_row = False
    engines = ("local",)
    order = 60

    def write_batch(self, batch: Batch, path: Path) -> None:
        write_addaxai_csv(batch.predictions, path, batch.root, batch.sequences)

    def has_content(self, path: Path) -> bool:
        return super().has_content(path) or super().has_content(addaxai_files_path(path))


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

