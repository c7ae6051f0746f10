"""CSV: one row per photo, flushed as it comes (``--resume`` goes on after the complete rows)."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from wildwatch.errors import UsageError
from wildwatch.inference.writers import Write, Writer, prepare_append, register_writer, row_values
from wildwatch.text import spreadsheet_text


@register_writer
class CsvWriter(Writer):
    name = "csv"
    title = "CSV"
    help = "one row per photo"
    output = "a .csv file"
    suffixes = (".csv",)
    resumable = True
    default = True
    sightings = True
    order = 10

    @contextmanager
    def open(self, path: Path, columns: Sequence[str], append: bool = False) -> Iterator[Write]:
        append = prepare_append(path, append)
        if append:
            same_columns(path, columns)
        with open(path, "a" if append else "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=list(columns))
            if not append:
                w.writeheader()

            def write(p) -> None:
                w.writerow(row_values(p))
                f.flush()

            yield write

    def done(self, path: Path) -> set[str]:
        if not path.exists():
            return set()
        with open(path, newline="", encoding="utf-8") as f:
            return {row["source"] for row in csv.DictReader(f) if row.get("source") and None not in row.values()}

    def write_sightings(self, rows: list, columns: Sequence[str], store=None, output: Path | None = None,
                        location=None) -> str | None:
        """One column per field; text from feeds and camera names never becomes a spreadsheet formula."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(columns))
        w.writeheader()
        w.writerows({k: spreadsheet_text(v) if isinstance(v, str) else v for k, v in r.to_json().items()} for r in rows)
        return buf.getvalue()


def same_columns(path: Path, columns: Sequence[str]) -> None:
    """A resumed CSV gets rows of the columns it has (``--detect`` adds its own), or none at all."""
    with open(path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    if header != list(columns):
        ran = "with" if "detections" in header else "without"
        raise UsageError(f"{path}: its columns are not this run's (it was written {ran} --detect, or by another "
                         "wildwatch version); resume it with the options it was written with, or add --overwrite "
                         "to replace it")
