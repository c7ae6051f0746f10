"""Output writers: one registered ``Writer`` per format, over the stream of ``Prediction``s.

A writer says what it is (``name``, the output ``suffixes`` that choose it, ``per_row`` or whole
batch, ``resumable``, the ``engines`` that write it, whether ``wildwatch events`` writes sightings
with it) and how it writes. The command line's ``--format`` choices, its rules
(``inference.batch.ClassifyOptions.check``) and its help are read from here; the local engine, Ray
and ``wildwatch events`` write through the same writers.

A format is added by one file: a module in this package with a ``Writer`` subclass decorated with
``@register_writer`` (the registry imports every module of the package that uses the decorator), or
by an installed package naming its module in the ``wildwatch.writers`` entry-point group. A name
that another writer holds is an error naming both.

Writers serialise a Prediction generically (its ``to_json()``; ``row_values`` flattens lists for
tables), so a field added to ``Prediction`` reaches every output without an edit here.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, overload

from wildwatch.errors import UnknownNameError, UsageError, WildwatchError
from wildwatch.plugins import Discovery

if TYPE_CHECKING:  # the registry loads without the model code: the command line's help reads it
    from wildwatch.inference.prediction import Prediction

ENTRY_POINT_GROUP = "wildwatch.writers"
_MARKER = "@register_writer"
_discovery = Discovery(__name__, _MARKER, ENTRY_POINT_GROUP)

Write = Callable[["Prediction"], None]


class DuplicateWriterError(WildwatchError, ValueError):
    """Two writers registered under one format name."""


@dataclass
class Batch:
    """What a whole-batch format is written from: every Prediction of the run and its settings.
    ``sequences`` (photos grouped into events) and ``root`` (the folder file names are relative
    to) are worked out only when a format asks for them."""

    predictions: list
    classes: list[str]
    model_name: str
    paths: list[Path]  # what was given to classify
    event_gap: float = 60.0
    location: tuple[float, float] | None = None  # the camera's position, for photos without GPS
    detector: dict | None = None  # the built-in detector's settings (classify --detect)

    @cached_property
    def sequences(self):
        from wildwatch.inference.camtrap import sequences

        return sequences(self.predictions, self.event_gap)

    @cached_property
    def root(self) -> Path:
        from wildwatch.inference.megadetector import image_root

        return image_root(self.paths)


class Writer:
    """One output format. Subclasses set the class attributes and implement ``open`` (per-row
    formats), ``write_batch`` (whole-batch formats) and, for ``sightings``, ``write_sightings``."""

    name: ClassVar[str]
    title: ClassVar[str]  # the format in words, for messages: "CSV", "Parquet"
    help: ClassVar[str]  # what --format NAME writes, for the command's help
    output: ClassVar[str] = "a file"  # what --output names: "a .json file", "a folder"
    suffixes: ClassVar[tuple[str, ...]] = ()  # per-row formats: output suffixes that choose this format
    per_row: ClassVar[bool] = True  # one row per photo; False: the whole batch, written when the run ends
    resumable: ClassVar[bool] = False  # --resume goes on after the rows an output has
    engines: ClassVar[tuple[str, ...]] = ("local", "ray")
    default: ClassVar[bool] = False  # the format of an output whose suffix names no format
    sightings: ClassVar[bool] = False  # `wildwatch events --format NAME` writes sightings with it
    order: ClassVar[int] = 100  # place in lists and help

    def open(self, path: Path, columns: Sequence[str], append: bool = False) -> AbstractContextManager[Write]:
        """Per-row formats: a function that writes one Prediction (``append``: after the rows
        already there, for ``--resume``)."""
        raise NotImplementedError(f"{self.name} describes the whole batch: use write_batch")

    def done(self, path: Path) -> set[str]:
        """Resumable formats: the sources already written to ``path`` (complete rows only)."""
        return set()

    def write_batch(self, batch: Batch, path: Path) -> None:
        """Whole-batch formats: write ``path`` from every Prediction, atomically."""
        raise NotImplementedError(f"{self.name} is written row by row: use open")

    def write_sightings(self, rows: list, columns: Sequence[str], store=None, output: Path | None = None,
                        location=None) -> str | None:
        """``sightings`` formats: the monitor's sightings (dataclass rows with ``to_json``; ``columns``
        their fields), as text for the terminal or ``output``; or None when the writer wrote
        ``output`` itself (a folder)."""
        raise UsageError(f"{self.name}: not a format for sightings")

    def has_content(self, path: Path) -> bool:
        """Whether writing ``path`` would replace something: a non-empty file or folder."""
        if path.is_dir():
            return any(path.iterdir())
        return path.exists() and path.stat().st_size > 0


_REGISTRY: dict[str, Writer] = {}


def _origin(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def register_writer(cls: type[Writer]) -> type[Writer]:
    """Class decorator: register a ``Writer`` under its ``name``; a name held by another writer is
    an error."""
    held = _REGISTRY.get(cls.name)
    if held is not None and _origin(type(held)) != _origin(cls):  # the same module imported again is no clash
        raise DuplicateWriterError(f"output format {cls.name!r} is registered twice: by {_origin(type(held))} and "
                                   f"by {_origin(cls)}; rename one of them")
    _REGISTRY[cls.name] = cls()
    return cls


def writer_modules() -> list[str]:
    """The modules of this package that register writers (those that use ``@register_writer``)."""
    return _discovery.modules()


def writers(engine: str | None = None, per_row: bool | None = None, sightings: bool | None = None) -> list[Writer]:
    """The registered writers (those an ``engine`` writes, per-row or whole-batch ones, those for
    sightings), in their order."""
    _discovery.ensure()
    found = [w for w in _REGISTRY.values() if (engine is None or engine in w.engines)
             and (per_row is None or w.per_row == per_row) and (sightings is None or w.sightings == sightings)]
    return sorted(found, key=lambda w: (w.order, w.name))


def get_writer(name: str) -> Writer:
    _discovery.ensure()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown format {name!r}: use --format {names(writers(engine='local'))}")
    return _REGISTRY[name]


def names(found: Sequence[Writer], word: str = "or") -> str:
    """``csv, jsonl or json``."""
    listed = [w.name for w in found]
    return listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} {word} {listed[-1]}"


def file_names(found: Sequence[Writer]) -> str:
    """``FILE.csv, FILE.jsonl or FILE.json``: the first suffix of each."""
    listed = [f"FILE{w.suffixes[0]}" for w in found if w.suffixes]
    return listed[0] if len(listed) == 1 else f"{', '.join(listed[:-1])} or {listed[-1]}"


def formats_help() -> str:
    """The help of ``classify --format``."""
    return ", ".join(f"{w.name} ({w.help})" for w in writers()) + ". Default: from --output."


@overload
def format_of(path: Path, given: str | None = None) -> str: ...


@overload
def format_of(path: Path | None, given: str | None = None) -> str | None: ...


def format_of(path: Path | None, given: str | None = None) -> str | None:
    """The format of an output: ``given`` (--format), else the per-row format its suffix names,
    else the default (CSV)."""
    if given:
        return given
    if path is None:
        return None
    return suffix_format(path) or next(w.name for w in writers() if w.default)


def suffix_format(path: Path) -> str | None:
    """The per-row format an output's suffix names, if any."""
    return next((w.name for w in writers(per_row=True) if path.suffix.lower() in w.suffixes), None)


def columns_of(kind: type | None = None) -> list[str]:
    """The table columns of a dataclass (default: ``Prediction``): its fields, in order
    (subclasses add theirs)."""
    from wildwatch.inference.prediction import Prediction

    return [f.name for f in dataclasses.fields(kind or Prediction)]


def row_values(p) -> dict:
    """A Prediction's row as flat values for a table: lists and mappings as JSON text."""
    return {k: json.dumps(v) if isinstance(v, (list, tuple, dict)) else v for k, v in p.to_row().items()}


def partial_path(path: Path) -> Path:
    """Where the rows of a ``.json`` output go while the run lasts (JSON lines, resumable); the JSON
    document is written from them, atomically, at the end."""
    return path.with_name(path.name + ".partial.jsonl")


def write_atomic(path: Path, text: str | bytes) -> None:
    """``path`` holds either its old content or all of ``text``, never a part (an interruption
    while writing leaves the old file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(text, bytes):
        tmp.write_bytes(text)
    else:
        tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class _Discard(AbstractContextManager):
    def __enter__(self) -> Write:
        return lambda p: None

    def __exit__(self, *exc) -> None:
        return None


def open_writer(path: Path | None, append: bool = False, fmt: str | None = None,
                columns: Sequence[str] | None = None) -> AbstractContextManager[Write]:
    """The per-row writer of ``path``'s format (``None``: rows go nowhere)."""
    if path is None:
        return _Discard()
    return get_writer(format_of(path, fmt)).open(path, columns or columns_of(), append)


def write_rows(predictions: Sequence, path: Path, fmt: str | None = None,
               columns: Sequence[str] | None = None) -> None:
    """Every Prediction at once (Ray's rows), through the same per-row writer."""
    with open_writer(path, fmt=fmt, columns=columns) as write:
        for p in predictions:
            write(p)


def prepare_append(path: Path, append: bool) -> bool:
    """Whether rows go after those already in ``path``: only when asked and there are some; a
    line cut by an interruption is dropped first (it is written again)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not (append and path.exists() and path.stat().st_size > 0):
        return False
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        path.write_bytes(data[: data.rfind(b"\n") + 1])
    return path.stat().st_size > 0
