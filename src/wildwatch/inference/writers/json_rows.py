"""One JSON document (a list of rows). While the run lasts its rows go, as JSON lines, to a
``.partial.jsonl`` file beside it (flushed per row, so ``--resume`` loses nothing); the document
is written from them, atomically, when the run ends. An interrupted run leaves the earlier
document as it was and its partial rows for ``--resume``."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from wildwatch.errors import UsageError
from wildwatch.inference.writers import Write, Writer, get_writer, partial_path, register_writer, write_atomic


@register_writer
class JsonWriter(Writer):
    name = "json"
    title = "JSON"
    help = "one JSON document, a list of rows, written atomically and resumable"
    output = "a .json file"
    suffixes = (".json",)
    resumable = True
    sightings = True
    order = 30

    @contextmanager
    def open(self, path: Path, columns: Sequence[str], append: bool = False) -> Iterator[Write]:
        partial = partial_path(path)
        with get_writer("jsonl").open(partial, columns, append=append) as write:
            yield write
        finish(path, partial, keep=append)

    def done(self, path: Path) -> set[str]:
        done = get_writer("jsonl").done(partial_path(path))
        if path.exists() and path.stat().st_size:
            try:
                done |= {r["source"] for r in json.loads(path.read_text(encoding="utf-8"))}
            except (ValueError, TypeError, KeyError):
                raise UsageError(f"{path}: not a JSON list of rows written by wildwatch; cannot resume it") from None
        return done

    def has_content(self, path: Path) -> bool:
        return partial_path(path).exists() or super().has_content(path)

    def write_sightings(self, rows: list, columns: Sequence[str], store=None, output: Path | None = None,
                        location=None) -> str | None:
        return json.dumps([r.to_json() for r in rows], indent=1)


def finish(path: Path, partial: Path, keep: bool) -> None:
    """The JSON document: the rows already in ``path`` (``keep``, a resumed run) and the partial rows."""
    rows = json.loads(path.read_text(encoding="utf-8")) if keep and path.exists() and path.stat().st_size else []
    if partial.exists():
        with open(partial, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.endswith("\n")]
    write_atomic(path, "[" + ",\n".join(json.dumps(r) for r in rows) + ("\n]\n" if rows else "]\n"))
    partial.unlink(missing_ok=True)
