"""Parquet: the rows as one table (the CSV's columns), written when the run ends (``--engine ray``)."""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from wildwatch.errors import require
from wildwatch.inference.writers import Write, Writer, register_writer, row_values, write_atomic


@register_writer
class ParquetWriter(Writer):
    name = "parquet"
    title = "Parquet"
    help = "a Parquet table of the rows; with --engine ray"
    output = "a .parquet file"
    suffixes = (".parquet",)
    engines = ("ray",)
    order = 40

    @contextmanager
    def open(self, path: Path, columns: Sequence[str], append: bool = False) -> Iterator[Write]:
        pa = require("pyarrow", "ray", "Parquet output")
        import pyarrow.parquet as pq

        rows: list[dict] = []
        yield lambda p: rows.append(row_values(p))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows]), buf)
        write_atomic(path, buf.getvalue())
