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
def open_writer(path: Path | None, append: bool = False, fmt: str | None = None) -> Iterator[Callable[[Prediction], None]]:
    """A function that writes one Prediction: CSV or JSON lines, flushed per row so an interrupted
    run keeps them (``append``: after the rows already there, for ``--resume``); or one JSON
    document (a list of rows), complete when the run ends."""
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
            w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
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
