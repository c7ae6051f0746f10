"""Stream Predictions to CSV or JSON-lines files as they come."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from wildwatch.inference.predictor import ROW_FIELDS, Prediction


def done_sources(path: Path | None) -> set[str]:
    """Sources already written to an output file (complete rows only), for ``--resume``."""
    if path is None or not path.exists():
        return set()
    done = set()
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
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


@contextmanager
def open_writer(path: Path | None, append: bool = False) -> Iterator[Callable[[Prediction], None]]:
    """A function that writes one Prediction; rows are flushed so an interrupted run keeps them.
    With ``append`` new rows go after the rows already there (``--resume``)."""
    if path is None:
        yield lambda p: None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    append = append and path.exists() and path.stat().st_size > 0
    if append:
        _truncate_partial_line(path)
    with open(path, "a" if append else "w", newline="", encoding="utf-8") as f:
        if path.suffix.lower() == ".csv":
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
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
