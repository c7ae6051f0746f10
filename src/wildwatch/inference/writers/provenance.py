"""The provenance sidecar of a per-row output: which model (file and SHA-256), backend, wildwatch
version and options made its rows. ``rows.csv`` gets ``rows.csv.provenance.json``; a resumed run
adds its own entry to ``runs``, so a file whose rows came from two runs says so."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from wildwatch.inference.writers import write_atomic
from wildwatch.models.files import file_sha256


def provenance_path(output: Path) -> Path:
    return output.with_name(output.name + ".provenance.json")


def run_record(model_file: Path, architecture: str, backend: str, options: dict, species_digest: str | None = None,
               engine: str = "local") -> dict:
    """One run's entry: the model, the backend, the version and the options it ran with."""
    from wildwatch import __version__

    model = {"file": str(model_file), "sha256": file_sha256(model_file), "architecture": architecture}
    if species_digest:
        model["species_network"] = species_digest  # --robust: the separate species network's digest
    return {"wildwatch_version": __version__, "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "engine": engine, "backend": backend, "model": model, "options": options}


def write_provenance(output: Path, fmt: str, run: dict, append: bool = False) -> Path:
    """Write (or, with ``append``, extend) the sidecar of ``output``, atomically."""
    path = provenance_path(output)
    runs: list = []
    if append and path.exists():
        try:
            runs = list(json.loads(path.read_text(encoding="utf-8")).get("runs", []))
        except (ValueError, AttributeError, TypeError):
            runs = []  # a damaged sidecar is replaced: the rows are what counts
    doc = {"output": output.name, "format": fmt, "runs": [*runs, run]}
    write_atomic(path, json.dumps(doc, indent=1) + "\n")
    return path
