"""Stream Predictions to CSV or JSON-lines files as they come."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wildwatch.inference.predictor import ROW_FIELDS, Prediction


@contextmanager
def open_writer(path: Path | None) -> Iterator[Callable[[Prediction], None]]:
    """A function that writes one Prediction; rows are flushed so an interrupted run keeps them."""
    if path is None:
        yield lambda p: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
            w.writeheader()

            def write(p: Prediction) -> None:
                w.writerow(p.to_row())
                f.flush()
        else:

            def write(p: Prediction) -> None:
                f.write(json.dumps(p.to_json()) + "\n")
                f.flush()

        yield write
