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
def open_writer(path: Path | None, append: bool = False, fmt: str | None = None) -> Iterator[Callable[[Prediction], None]]:
    """A function that writes one Prediction: CSV or JSON lines, flushed per row so an interrupted
    run keeps them (``append``: after the rows already there, for ``--resume``). A ``.json``
    output (one JSON document, a list of rows) is written as JSON lines beside it while the run
    lasts, and as the document, atomically, when it ends; an interrupted run leaves the earlier
    document as it was and its partial rows for ``--resume``."""
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
    with open(path, "a" if append else "w", newline="", encoding="utf-8") as f:
        if fmt == "csv":
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


def _finish_json(path: Path, partial: Path, keep: bool) -> None:
    """The JSON document: the rows already in ``path`` (``keep``, a resumed run) and the partial rows."""
    rows = json.loads(path.read_text(encoding="utf-8")) if keep and path.exists() and path.stat().st_size else []
    if partial.exists():
        with open(partial, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.endswith("\n")]
    write_atomic(path, "[" + ",\n".join(json.dumps(r) for r in rows) + ("\n]\n" if rows else "]\n"))
    partial.unlink(missing_ok=True)
