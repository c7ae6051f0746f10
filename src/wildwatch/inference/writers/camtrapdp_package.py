"""Camtrap DP 1.0.2 packages, of classified photos and of the monitor's sightings; the package
itself is written by ``inference.formats``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from wildwatch.errors import UsageError
from wildwatch.inference.writers import Batch, Writer, register_writer


@register_writer
class CamtrapDPWriter(Writer):
    name = "camtrapdp"
    title = "Camtrap DP"
    help = "a Camtrap DP folder"
    output = "a folder"
    per_row = False
    engines = ("local",)
    sightings = True
    order = 55

    def write_batch(self, batch: Batch, path: Path) -> None:
        from wildwatch.inference.formats import write_camtrap_dp

        write_camtrap_dp(batch.predictions, path, batch.model_name, batch.root, batch.location, batch.sequences,
                         batch.detector["detector"] if batch.detector else None)

    def write_sightings(self, rows: list, columns: Sequence[str], store=None, output: Path | None = None,
                        location=None) -> str | None:
        if output is None:
            raise UsageError("--format camtrapdp needs --output FOLDER")
        from wildwatch.inference.formats import write_camtrap_dp_events

        write_camtrap_dp_events(rows, store, output, location)
        return None
