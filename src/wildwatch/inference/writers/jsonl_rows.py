"""JSON lines: one JSON object per photo, flushed as it comes (``--resume`` goes on after the
complete lines)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from wildwatch.inference.writers import Write, Writer, prepare_append, register_writer


@register_writer
class JsonLinesWriter(Writer):
    name = "jsonl"
    title = "JSON lines"
    help = "one JSON object per photo, a line each"
    output = "a .jsonl file"
    suffixes = (".jsonl", ".ndjson")
    resumable = True
    order = 20

    @contextmanager
    def open(self, path: Path, columns: Sequence[str], append: bool = False) -> Iterator[Write]:
        append = prepare_append(path, append)
        with open(path, "a" if append else "w", encoding="utf-8") as f:

            def write(p) -> None:
                f.write(json.dumps(p.to_json()) + "\n")
                f.flush()

            yield write

    def done(self, path: Path) -> set[str]:
        done: set[str] = set()
        if not path.exists():
            return done
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    done.add(json.loads(line)["source"])
                except (ValueError, KeyError, TypeError):
                    pass  # a line cut by an interruption is written again
        return done
