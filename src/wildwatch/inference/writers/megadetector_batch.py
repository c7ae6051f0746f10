"""MegaDetector batch output (format 1.5), for Timelapse and the MegaDetector tools; the format
itself is written by ``inference.megadetector``."""

from __future__ import annotations

import json
from pathlib import Path

from wildwatch.inference.writers import Batch, Writer, register_writer, write_atomic


@register_writer
class MegaDetectorWriter(Writer):
    name = "megadetector"
    title = "MegaDetector batch output"
    help = "batch-output JSON for Timelapse"
    output = "a .json file"
    per_row = False
    engines = ("local",)
    order = 50

    def write_batch(self, batch: Batch, path: Path) -> None:
        from wildwatch.inference.megadetector import predictions_json

        doc = predictions_json(batch.predictions, batch.classes, batch.model_name, batch.paths, batch.detector,
                               batch.sequences.md_by_photo())
        doc["info"]["classifier_metadata"]["event_gap_s"] = batch.event_gap
        write_atomic(path, json.dumps(doc, indent=1))
