"""COCO Camera Traps, the LILA data sets' format."""

from __future__ import annotations

import json
from pathlib import Path

from wildwatch.inference.writers import Batch, Writer, register_writer, write_atomic


@register_writer
class CocoWriter(Writer):
    name = "coco"
    title = "COCO Camera Traps"
    help = "COCO Camera Traps JSON"
    output = "a .json file"
    per_row = False
    engines = ("local",)
    order = 70

    def write_batch(self, batch: Batch, path: Path) -> None:
        doc = coco_camera_traps(batch.predictions, batch.root, batch.sequences, batch.model_name)
        write_atomic(path, json.dumps(doc, indent=1))


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
    images: list[dict] = []
    annotations: list[dict] = []
    failed: list[str] = []
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
        dets: list[dict | None] = [*photo_detections(p)] or [None]
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
