"""Output writers as a registry: the formats, their rules and help come from one place; a new
format is one registration (or one file of an installed package); rows carry a provenance sidecar."""

import csv
import dataclasses
import hashlib
import json
import subprocess
import sys
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from wildwatch.errors import UsageError
from wildwatch.inference import writers as registry
from wildwatch.inference.batch import ClassifyOptions, classify_files
from wildwatch.inference.prediction import Prediction
from wildwatch.inference.writers import (
    Batch,
    DuplicateWriterError,
    Writer,
    columns_of,
    formats_help,
    get_writer,
    register_writer,
    row_values,
    writers,
)
from wildwatch.inference.writers.provenance import provenance_path
from wildwatch.models.bundle import bundled_model_path


@pytest.fixture()
def photos(tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (64, 48), (40 * i, 120, 60)).save(folder / f"{i}.jpg")
    return folder


@pytest.fixture()
def scratch_registry():
    """Writers a test registers are gone after it."""
    writers()  # the registered ones are loaded before the snapshot
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_every_format_is_a_registered_writer_with_its_traits():
    found = {w.name: w for w in writers()}
    assert list(found) == ["csv", "jsonl", "json", "parquet", "megadetector", "camtrapdp", "addaxai", "coco"]
    assert [w.name for w in writers(per_row=True)] == ["csv", "jsonl", "json", "parquet"]
    assert [w.name for w in writers() if w.resumable] == ["csv", "jsonl", "json"]
    assert [w.name for w in writers(engine="ray")] == ["csv", "jsonl", "json", "parquet"]
    assert [w.name for w in writers(sightings=True)] == ["csv", "json", "camtrapdp"]
    assert found["jsonl"].suffixes == (".jsonl", ".ndjson") and found["camtrapdp"].output == "a folder"
    help_text = formats_help()
    assert all(f"{name} (" in help_text for name in found)  # the command's help lists every one


def test_a_name_registered_twice_is_an_error(scratch_registry):
    with pytest.raises(DuplicateWriterError, match="'csv' is registered twice"):
        @register_writer
        class OtherCsv(Writer):
            name, title, help = "csv", "CSV", "again"


def _tsv_writer():
    """A whole new per-row format, written the way a contributor would: one class."""

    @register_writer
    class TsvWriter(Writer):
        name, title, help, output = "tsv", "TSV", "tab-separated rows", "a .tsv file"
        suffixes = (".tsv",)
        resumable = True
        sightings = True

        @contextmanager
        def open(self, path: Path, columns: Sequence[str], append: bool = False):
            append = registry.prepare_append(path, append)
            with open(path, "a" if append else "w", newline="", encoding="utf-8") as f:
                w = csv.DictWriter(f, fieldnames=list(columns), delimiter="\t")
                if not append:
                    w.writeheader()
                yield lambda p: (w.writerow(row_values(p)), f.flush())

        def done(self, path: Path) -> set[str]:
            with open(path, newline="", encoding="utf-8") as f:
                return {r["source"] for r in csv.DictReader(f, delimiter="\t")}

        def write_sightings(self, rows, columns, store=None, output=None, location=None):
            return "\t".join(columns) + "\n" + "".join("\t".join(str(v) for v in r.to_json().values()) + "\n"
                                                      for r in rows)

    return TsvWriter


def test_adding_a_format_is_one_registration(photos, tmp_path, scratch_registry):
    """The choices, the suffix, the rules (--resume, overwriting), the help and events --format all
    follow from the registration; nothing else is edited."""
    _tsv_writer()
    out = tmp_path / "rows.tsv"
    assert ClassifyOptions(paths=[photos], output=out).fmt == "tsv"
    assert "tsv (tab-separated rows)" in formats_help()
    first = classify_files(ClassifyOptions(paths=[photos / "0.jpg", photos / "1.jpg"], output=out))
    assert first.files == 2
    with pytest.raises(UsageError, match="--resume to go on"):  # the overwrite rule, with its resumable wording
        ClassifyOptions(paths=[photos], output=out).check()
    again = classify_files(ClassifyOptions(paths=[photos], output=out, resume=True))
    assert again.already_done == 2 and again.files == 2
    with open(out, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    assert sorted(Path(r["source"]).name for r in rows) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]
    assert list(rows[0]) == columns_of(Prediction)
    with pytest.raises(UsageError, match="FILE.tsv"):  # the rule's message lists it among the resumable files
        ClassifyOptions(paths=[photos], format="megadetector", output=tmp_path / "x.json", resume=True).check()
    with pytest.raises(UsageError, match="make them agree"):
        ClassifyOptions(paths=[photos], format="csv", output=tmp_path / "x.tsv").check()
    from typer.testing import CliRunner

    from wildwatch.cli import app
    from wildwatch.store.events import EventStore, Sighting

    db = tmp_path / "events.db"
    store = EventStore(db)
    store.add(Sighting("cam1", "rhino", 0.9, "2026-05-01T05:00:00+00:00", "2026-05-01T05:01:00+00:00"))
    store.close()
    listed = CliRunner().invoke(app, ["events", "--db", str(db), "--format", "tsv"])
    assert listed.exit_code == 0 and listed.output.startswith("source\tspecies\t") and "cam1\trhino" in listed.output


def test_adding_a_whole_batch_format_is_one_registration(photos, tmp_path, scratch_registry):
    @register_writer
    class EventCount(Writer):
        name, title, help, output = "eventcount", "event count", "photos per event", "a .json file"
        per_row = False
        engines = ("local",)

        def write_batch(self, batch: Batch, path: Path) -> None:
            registry.write_atomic(path, json.dumps({ev.id: len(ev.members) for ev in batch.sequences.events}))

    out = tmp_path / "events.json"
    with pytest.raises(UsageError, match="--format eventcount needs --output"):
        ClassifyOptions(paths=[photos], format="eventcount").check()
    classify_files(ClassifyOptions(paths=[photos], format="eventcount", output=out))
    assert sum(json.loads(out.read_text()).values()) == 4  # every photo in one event or another
    assert not provenance_path(out).exists()  # a batch format describes itself


PLUGIN = '''
"""A format from an installed package: this one file and its entry point."""
import json
from contextlib import contextmanager

from wildwatch.inference.writers import Writer, register_writer


@register_writer
class SpeciesLines(Writer):
    name, title, help, output = "specieslines", "species lines", "the species of each photo, a line each", "a .txt file"
    suffixes = (".species",)

    @contextmanager
    def open(self, path, columns, append=False):
        with open(path, "w", encoding="utf-8") as f:
            yield lambda p: f.write(json.dumps([p.source, p.species or p.error]) + "\\n")
'''


def test_a_format_from_an_installed_package_is_one_file(photos, tmp_path):
    """An entry point in the ``wildwatch.writers`` group names the module; the command line takes
    it, chooses it by its suffix and lists it in its help."""
    site = tmp_path / "site"
    (site / "wildwatch_species_lines-1.0.dist-info").mkdir(parents=True)
    (site / "wildwatch_species_lines.py").write_text(PLUGIN)
    info = site / "wildwatch_species_lines-1.0.dist-info"
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wildwatch-species-lines\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[wildwatch.writers]\nspecieslines = wildwatch_species_lines\n")
    env = {"PYTHONPATH": f"{site}:{Path(registry.__file__).parents[3]}", "PATH": "/usr/bin:/bin", "COLUMNS": "1000"}
    out = tmp_path / "rows.species"

    def wildwatch(*args):
        return subprocess.run([sys.executable, "-m", "wildwatch", *map(str, args)], capture_output=True, text=True,
                              timeout=300, env=env, check=False)

    assert "specieslines (the species of each photo" in wildwatch("classify", "--help").stdout.replace("\n", " ")
    proc = wildwatch("classify", photos, "--output", out, "-q")
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(src).name for src, _ in lines) == ["0.jpg", "1.jpg", "2.jpg", "3.jpg"]


def test_row_outputs_carry_a_provenance_sidecar(photos, tmp_path):
    out = tmp_path / "rows.jsonl"
    classify_files(ClassifyOptions(paths=[photos / "0.jpg"], output=out, top_k=2, country="KE"))
    side = json.loads(provenance_path(out).read_text())
    [run] = side["runs"]
    model = bundled_model_path()
    assert side["format"] == "jsonl" and run["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert run["model"]["file"] == str(model) and run["backend"] == "onnx-int8" and run["engine"] == "local"
    assert run["options"]["top_k"] == 2 and run["options"]["country"] == "KE"
    from wildwatch import __version__

    assert run["wildwatch_version"] == __version__
    classify_files(ClassifyOptions(paths=[photos], output=out, resume=True))
    assert len(json.loads(provenance_path(out).read_text())["runs"]) == 2  # rows from two runs: both are named
    classify_files(ClassifyOptions(paths=[photos], output=out, overwrite=True))
    assert len(json.loads(provenance_path(out).read_text())["runs"]) == 1


@dataclasses.dataclass(frozen=True)
class _Richer(Prediction):
    """A Prediction with fields added later (as the species/unknown decision added ``uncertain``)."""

    reviewed: bool = False
    evidence: tuple[dict, ...] = ()


def test_fields_added_to_a_prediction_reach_every_row_format(tmp_path):
    preds = [_Richer("a.jpg", "lion", 0.9, reviewed=True, evidence=({"species": "lion", "p": 0.9},)),
             _Richer("b.jpg", error="broken")]
    columns = columns_of(_Richer)
    assert columns[-2:] == ["reviewed", "evidence"]
    for name in ("csv", "jsonl", "json", "parquet"):
        out = tmp_path / f"rows.{name}"
        with get_writer(name).open(out, columns) as write:
            for p in preds:
                write(p)
        if name == "csv":
            rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
        elif name == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        elif name == "json":
            rows = json.loads(out.read_text())
        else:
            import pyarrow.parquet as pq

            rows = pq.read_table(out).to_pylist()
        assert str(rows[0]["reviewed"]) == "True", name
        evidence = rows[0]["evidence"]
        assert (json.loads(evidence) if isinstance(evidence, str) else evidence) == [{"species": "lion", "p": 0.9}]
