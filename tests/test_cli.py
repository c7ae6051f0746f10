"""The command line end to end, through the installed console script."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import csv_rows

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def run(*args, check=True):
    proc = subprocess.run([WILDWATCH, *map(str, args)], capture_output=True, text=True, timeout=600, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nstdout:{proc.stdout}\nstderr:{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def cli_run(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    run("train", "--data", shapes_dir, "--model", "seed_m4_gap", "--epochs", 3, "--image-size", 32,
        "--batch-size", 16, "--lr", 0.003, "--workers", 0, "--out", out, "--ratios", "0.6,0.2,0.2")
    return out


def test_train_then_evaluate(cli_run, shapes_dir, tmp_path):
    assert (cli_run / "model.safetensors").exists()
    proc = run("evaluate", "--model", cli_run, "--data", shapes_dir, "--out", tmp_path / "ev", "--no-views")
    assert "test split" in proc.stdout and "accuracy" in proc.stdout
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["split"] == "test"


def test_a_run_folder_is_a_bundle_and_export_int8_joins_it(cli_run, shapes_dir, tmp_path):
    """train writes the run folder's manifest; export --int8 writes the int8 copy and its report beside
    the model and names them there; classify then runs it from the folder alone."""
    folder = tmp_path / "run"
    shutil.copytree(cli_run, folder)  # the shared run stays without an int8 copy
    manifest = json.loads((folder / "info.json").read_text())
    assert manifest["weights"] == "model.safetensors" and manifest["metadata"] == "model.json" and "int8" not in manifest
    photos = shapes_dir / "red_circles"
    proc = run("classify", photos, "--model", folder, "--backend", "onnx-int8", check=False)
    assert proc.returncode == 2 and "wildwatch export" in proc.stderr
    run("export", "--model", folder, "--int8", "--data", shapes_dir, "--calibration-size", 16)
    manifest = json.loads((folder / "info.json").read_text())
    assert manifest["int8"] == {"file": "model.int8.onnx", "report": "model.int8.json"}
    assert json.loads((folder / "model.int8.json").read_text())["calibration_photos"] == 16
    out = tmp_path / "rows.csv"
    proc = run("classify", photos, "--model", folder, "--backend", "onnx-int8", "--output", out)
    assert "(onnx-int8 backend)" in proc.stderr and len(csv_rows(out)) == len(list(photos.glob("*.jpg")))


def test_classify_folder_with_broken_files_goes_on(cli_run, broken_dir, tmp_path):
    out = tmp_path / "rows.csv"
    proc = run("classify", broken_dir, "--model", cli_run, "--output", out, "--top-k", 2, check=False)
    assert proc.returncode == 1  # some files failed; every row is written
    rows = csv_rows(out)
    by_name = {Path(r["source"]).name: r for r in rows}
    assert set(by_name) == {"good.jpg", "empty.jpg", "truncated.jpg", "text.jpg", "cmyk.jpg", "sixteen_bit.png"}
    for bad in ("empty.jpg", "truncated.jpg", "text.jpg"):
        assert bad in by_name[bad]["error"] and by_name[bad]["species"] == ""
    for good in ("good.jpg", "cmyk.jpg", "sixteen_bit.png"):
        r = by_name[good]
        classes = {"blue_triangles", "green_squares", "red_circles"}
        assert r["error"] == "" and (r["species"] in classes or set(r["candidates"].split(",")) <= classes)
        top = json.loads(r["top_k"])
        assert len(top) == 2 and top[0]["species"] in (r["species"], r["candidates"].split(",")[0])
        assert abs(top[0]["probability"] - float(r["confidence"])) < 1e-6
    assert "6 files, 3 classified, 3 errors" in proc.stderr
    assert "ERROR" in proc.stdout and "truncated.jpg" in proc.stdout


def test_classify_jsonl_and_single_file(cli_run, shapes_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    img = next((shapes_dir / "red_circles").glob("*.jpg"))
    assert run("classify", img, tmp_path / "missing.jpg", "--model", cli_run, "--output", out, "-q",
               check=False).returncode == 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["source"] == str(img) and rows[0]["error"] is None
    assert {"path", "species", "confidence", "top_k", "error"} <= set(rows[0]) | {"path"}
    assert "file not found" in rows[1]["error"]


def test_errors_are_one_line_without_traceback(tmp_path):
    proc = run("classify", tmp_path, "--model", tmp_path / "nothing.safetensors", check=False)
    assert proc.returncode == 2 and "no model here" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--data", tmp_path / "nope", "--model", "seed_m0", "--out", tmp_path / "o", check=False)
    assert proc.returncode == 2 and "not a folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("train", "--data", tmp_path, "--model", "nope", check=False)
    assert proc.returncode == 2 and "unknown model" in proc.stderr


def test_models_and_audit(shapes_dir, broken_dir, tmp_path):
    assert "seed_m4_gap" in run("models").stdout
    data = tmp_path / "d"
    shutil.copytree(shapes_dir, data)
    shutil.copy(broken_dir / "truncated.jpg", data / "red_circles" / "broken.jpg")
    shutil.copy(data / "red_circles" / "img000.jpg", data / "green_squares" / "copy.jpg")
    proc = run("data", "audit", data, "--out", tmp_path / "audit.json")
    report = json.loads((tmp_path / "audit.json").read_text())
    assert report["counts"]["red_circles"] == 46 and report["total"] == 137
    assert [u["path"] for u in report["unreadable"]] == ["red_circles/broken.jpg"]
    assert len(report["exact_duplicates_across_classes"]) == 1
    assert report["near_duplicate_groups"] >= 15
    # every class is 48x48: size tells nothing, so no warning
    assert "WARNING" not in proc.stdout
    # one class all 64x64 (as five classes of endangered11 are all 256x256): the audit warns
    from PIL import Image

    for f in (data / "blue_triangles").glob("*.jpg"):
        Image.open(f).resize((64, 64)).save(f)
    proc = run("data", "audit", data)
    assert "WARNING: image size predicts the class" in proc.stdout and "blue_triangles" in proc.stdout


def test_classify_resume_skips_done_files_and_keeps_order(cli_run, shapes_dir, tmp_path):
    out = tmp_path / "rows.csv"
    folder = shapes_dir / "green_squares"
    run("classify", folder, "--model", cli_run, "--output", out, "-q")
    full = csv_rows(out)
    # simulate an interruption: keep 10 rows and half of the 11th
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:11]) + lines[11][:15])
    proc = run("classify", folder, "--model", cli_run, "--output", out, "--resume", "-q")
    again = csv_rows(out)
    assert [r["source"] for r in again] == [r["source"] for r in full]
    assert "10 already done" in proc.stderr


def test_classify_explain_writes_overlays(cli_run, shapes_dir, tmp_path):
    from PIL import Image

    run("classify", shapes_dir / "red_circles", "--model", cli_run, "--explain", tmp_path / "cams", "-q")
    pngs = sorted((tmp_path / "cams").glob("*.png"))
    assert len(pngs) == 45
    assert Image.open(pngs[0]).size == (32, 32)


def test_classify_robust_uses_the_species_network(cli_run, tmp_path):
    from conftest import REAL_DATA

    assert REAL_DATA.exists(), f"{REAL_DATA}: the real photos are needed here (CI always has ../shared/data)"
    photos = sorted((REAL_DATA / "lion").glob("*.jpg"))[-3:]
    out = tmp_path / "rows.jsonl"
    proc = run("classify", *photos, "--robust", "--output", out)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["source"] for r in rows] == [str(p) for p in photos]
    assert sum(r["species"] == "lion" for r in rows) >= 2
    assert "onnx-int8+species" in proc.stderr
    # a custom model cannot take the bundled species network when its classes differ
    bad = run("classify", photos[0], "--model", cli_run, "--robust", check=False)
    assert bad.returncode == 2 and "classes" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("opts, message", [
    ({"format": "xml"}, "unknown format 'xml'"),
    ({"format": "megadetector"}, "--format megadetector needs --output"),
    ({"resume": True}, "--resume needs --output"),
    ({"country": "Kenya"}, "ISO 3166-1 alpha-2"),
    ({"engine": "spark"}, "unknown engine 'spark'"),
    ({"engine": "ray", "robust": True, "output": "x.csv"}, "--robust runs with the local engine only"),
    ({"output": "x.parquet"}, "Parquet output comes with --engine ray"),
])
def test_classify_options_refuse_what_cannot_work(opts, message):
    from wildwatch.errors import UsageError
    from wildwatch.inference.batch import ClassifyOptions

    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        ClassifyOptions(paths=["."], **opts).check()


def test_classify_options_take_the_format_from_the_output():
    from wildwatch.errors import UsageError
    from wildwatch.inference.batch import ClassifyOptions

    assert ClassifyOptions(paths=["."], output="rows.json").fmt == "json"
    assert ClassifyOptions(paths=["."], output="rows.jsonl").fmt == "jsonl"
    assert ClassifyOptions(paths=["."], output="rows.txt", format="csv").fmt == "csv"
    with pytest.raises(UsageError, match="make them agree"):
        ClassifyOptions(paths=["."], output="rows.csv", format="jsonl").check()
    ClassifyOptions(paths=["."], output="rows.csv", resume=True).check()
    ClassifyOptions(paths=["."], output="rows.json", resume=True).check()  # a .json output resumes too
    with pytest.raises(UsageError, match="--resume needs"):
        ClassifyOptions(paths=["."], output="out.json", format="megadetector", resume=True).check()


def test_output_files_follow_the_format_and_failed_rows_are_empty(cli_run, broken_dir, tmp_path):
    as_txt, as_json = tmp_path / "rows.txt", tmp_path / "rows.json"
    run("classify", broken_dir, "--model", cli_run, "--format", "csv", "--output", as_txt, "-q", check=False)
    rows = csv_rows(as_txt)
    assert len(rows) == 6 and set(rows[0]) >= {"source", "species", "confidence", "error"}
    broken = [r for r in rows if r["error"]]
    assert broken and all(r["confidence"] == "" and r["unknown"] == "" and r["threatened"] == "" for r in broken)
    run("classify", broken_dir, "--model", cli_run, "--output", as_json, "-q", check=False)
    doc = json.loads(as_json.read_text())  # one JSON document
    assert isinstance(doc, list) and len(doc) == 6
    failed = [r for r in doc if r["error"]]
    assert failed and all(r["confidence"] is None and r["unknown"] is None for r in failed)
    assert all(r["unknown"] in (True, False) for r in doc if not r["error"])
    # a named or uncertain answer has a confidence; an unknown one has none (the species' probabilities say nothing)
    assert all(isinstance(r["confidence"], float) == (not r["unknown"]) for r in doc if not r["error"])


def test_heic_photos_are_read(cli_run, tmp_path):
    from PIL import Image

    import wildwatch.data.loading  # noqa: F401 - registers the HEIF opener, here to write one

    photos = tmp_path / "phone"
    photos.mkdir()
    Image.new("RGB", (320, 240), (210, 40, 40)).save(photos / "IMG_0001.HEIC", quality=90)
    out = tmp_path / "rows.csv"
    run("classify", photos, "--model", cli_run, "--output", out, "-q")
    [row] = csv_rows(out)
    assert row["source"].endswith("IMG_0001.HEIC") and row["error"] == "" and row["species"]
