"""A model bundle: one manifest (``info.json``) naming every file of a model.

A model is its weights (a ``.safetensors`` file whose metadata holds the classes, the preprocessing
and the species/unknown decision, ``models.files``) and the files made from them: the readable copy
of that metadata, an fp32 ONNX copy, the int8 ONNX copy with its export report (whether
``--backend auto`` may use it, its own unknown threshold), and the species network of ``--robust``
(an int8 ONNX file with its report: classes, preprocessing, temperature). The manifest names them;
nothing is found by its file name::

    {"format": "wildwatch-bundle/1",
     "weights": "model.safetensors", "metadata": "model.json",
     "int8": {"file": "model.int8.onnx", "report": "model.int8.json"},
     "species": {"file": "species.int8.onnx", "report": "species.int8.json"}}

``load_bundle`` is the one loader: the bundled model (``None``), a folder with a manifest (the
bundled one, a run folder of ``wildwatch train``), the manifest itself, or a model file. A model file
or run folder without a manifest is a bundle of its weights alone (its fp32 ONNX copy is exported to
the cache). ``wildwatch train`` writes a run folder's manifest and ``wildwatch export --int8`` adds
its int8 file. A manifest is outside input: it is parsed with a size bound and a strict schema, and
names files of its own folder only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from wildwatch.errors import ModelFileError
from wildwatch.models.files import atomic_write, metadata_copy_path, read_model_meta, resolve_model_path

MANIFEST = "info.json"
BUNDLE_FORMAT = "wildwatch-bundle/1"
BUNDLED = "resources/bundled"  # the model shipped in the package
MAX_MANIFEST_BYTES = 64 * 1024
MAX_REPORT_BYTES = 1024 * 1024


def _plain_name(name: str) -> str:
    """A file of the manifest's own folder: no path, no parent, nothing hidden."""
    if not name or name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
        raise ValueError(f"{name!r} is not a plain file name in the manifest's folder")
    return name


class OnnxEntry(BaseModel):
    """An ONNX file and its export report (what ``wildwatch export --int8`` wrote)."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(max_length=255)
    report: str | None = Field(default=None, max_length=255)

    @field_validator("file", "report")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return v if v is None else _plain_name(v)


class Manifest(BaseModel):
    """``info.json``: the files of one model, by name, in the manifest's folder."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["wildwatch-bundle/1"]
    description: str = Field(default="", max_length=2000)
    weights: str | None = Field(default=None, max_length=255)  # None: a species network alone
    metadata: str | None = Field(default=None, max_length=255)  # the readable copy of the weights' metadata
    fp32: str | None = Field(default=None, max_length=255)  # None: exported to the cache on first use
    int8: OnnxEntry | None = None
    species: OnnxEntry | None = None  # the species network of --robust

    @field_validator("weights", "metadata", "fp32")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return v if v is None else _plain_name(v)


@dataclass(frozen=True)
class OnnxFile:
    """An ONNX file of a bundle and its export report."""

    path: Path
    report_path: Path | None = None

    def report(self) -> dict[str, Any]:
        """The export report ({} when the bundle names none)."""
        if self.report_path is None:
            return {}
        return _read_json(self.report_path, MAX_REPORT_BYTES)


@dataclass(frozen=True)
class Bundle:
    """The files of one model, resolved to paths. ``manifest`` is None for a model file alone."""

    folder: Path
    weights: Path | None
    manifest: Path | None = None
    metadata: Path | None = None
    fp32: Path | None = None
    int8: OnnxFile | None = None
    species: OnnxFile | None = None

    @property
    def model_file(self) -> Path:
        """The weights; a bundle that names none (a species network alone) is no model to load."""
        if self.weights is None:
            raise ModelFileError(f"{self.manifest}: names no weights (a species network alone is used with "
                                 "species_model=, not loaded as a model)")
        return self.weights

    def meta(self) -> dict[str, Any]:
        """The weights' metadata: classes, preprocessing, the decision."""
        return read_model_meta(self.model_file)


def bundled_folder() -> Path:
    return Path(str(resources.files("wildwatch").joinpath(BUNDLED)))


def bundled() -> Bundle:
    """The model shipped inside the package."""
    return load_bundle(bundled_folder())


def bundled_model_path() -> Path:
    """The bundled model's weights."""
    return bundled().model_file


def load_bundle(path: str | Path | None = None) -> Bundle:
    """The bundle of ``path``: None (the bundled model), a folder (its manifest, else its
    ``model.safetensors`` alone), a manifest, or a model file (with the manifest of its folder when
    that manifest names it as its weights)."""
    p = bundled_folder() if path is None else Path(path)
    if p.is_dir() and (p / MANIFEST).is_file():
        return _from_manifest(p / MANIFEST)
    if p.is_file() and p.suffix == ".json":
        return _from_manifest(p)
    weights = resolve_model_path(p)
    if (weights.parent / MANIFEST).is_file():
        b = _from_manifest(weights.parent / MANIFEST)
        if b.weights is not None and b.weights.resolve() == weights.resolve():
            return b
    return Bundle(weights.parent, weights)


def read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.model_validate(_read_json(path, MAX_MANIFEST_BYTES))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}" for e in exc.errors()[:3])
        raise ModelFileError(f"{path}: not a wildwatch bundle manifest ({problems})") from None


def _from_manifest(path: Path) -> Bundle:
    m = read_manifest(path)
    folder = path.parent

    def named(name: str, what: str) -> Path:
        f = folder / name
        if not f.is_file():
            raise ModelFileError(f"{path}: names {name} as its {what}, which is not in {folder}")
        return f

    def optional(name: str | None, what: str) -> Path | None:
        return None if name is None else named(name, what)

    def onnx(entry: OnnxEntry | None, what: str) -> OnnxFile | None:
        if entry is None:
            return None
        return OnnxFile(named(entry.file, what), optional(entry.report, f"{what}'s export report"))

    return Bundle(folder, optional(m.weights, "weights"), path, optional(m.metadata, "metadata"),
                  optional(m.fp32, "fp32 ONNX file"), onnx(m.int8, "int8 ONNX file"),
                  onnx(m.species, "species network"))


def _read_json(path: Path, limit: int) -> Any:
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ModelFileError(f"{path}: larger than {limit:,} bytes; not a wildwatch file")
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{path}: not valid JSON ({exc})") from None


def write_manifest(bundle: Bundle, description: str = "") -> Path:
    """Write (atomically) the manifest of ``bundle``'s folder, naming its files; returns its path."""
    def name(p: Path | None) -> str | None:
        if p is None:
            return None
        if p.parent.resolve() != bundle.folder.resolve():
            raise ModelFileError(f"{p}: a bundle's files are in its own folder ({bundle.folder})")
        return p.name

    def entry(f: OnnxFile | None) -> OnnxEntry | None:
        return None if f is None else OnnxEntry(file=name(f.path) or "", report=name(f.report_path))

    old = read_manifest(bundle.manifest) if bundle.manifest is not None else None
    m = Manifest(format=BUNDLE_FORMAT, description=description or (old.description if old else ""),
                 weights=name(bundle.weights), metadata=name(bundle.metadata), fp32=name(bundle.fp32),
                 int8=entry(bundle.int8), species=entry(bundle.species))
    target = bundle.folder / MANIFEST
    text = json.dumps(m.model_dump(exclude_none=True), indent=2) + "\n"
    atomic_write(target, lambda tmp: Path(tmp).write_text(text))
    return target


def manifest_taken(bundle: Bundle) -> bool:
    """Whether ``bundle``'s folder holds the manifest of another model (a model file alone in a
    folder whose manifest names other weights)."""
    return bundle.manifest is None and (bundle.folder / MANIFEST).exists()


def fresh_bundle(weights: Path) -> Bundle:
    """The bundle of a model file just written (``save_model``): its weights and the readable copy of
    their metadata; a manifest written from it names no ONNX copy made from earlier weights."""
    meta_copy = metadata_copy_path(weights)
    return Bundle(weights.parent, weights, metadata=meta_copy if meta_copy.is_file() else None)
