"""wildwatch's files checked with the camera-trap field's own tools: MegaDetector's validator and
post-processing, the official Camtrap DP profile and table schemas, a generated API client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import OOD_DATA, REAL_DATA
from PIL import Image

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def wildwatch(*args, code=0) -> subprocess.CompletedProcess:
    proc = subprocess.run([WILDWATCH, *map(str, args)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == code, proc.stderr[-3000:]
    return proc


def md_validate(path: Path) -> list[str]:
    from megadetector.postprocessing.validate_batch_results import ValidateBatchResultsOptions, validate_batch_results

    options = ValidateBatchResultsOptions()
    options.raise_errors = False
    return validate_batch_results(str(path), options)["validation_results"]["errors"]


def md_smooth_and_convert(path: Path, tmp_path: Path) -> dict:
    """MegaDetector's image-level smoothing (which parses the taxonomy strings) and its CSV export."""
    from megadetector.postprocessing.classification_postprocessing import (
        ClassificationSmoothingOptions,
        smooth_classification_results_image_level,
    )
    from megadetector.postprocessing.convert_output_format import convert_json_to_csv

    smoothed = tmp_path / "smoothed.json"
    smooth_classification_results_image_level(str(path), str(smoothed), ClassificationSmoothingOptions())
    convert_json_to_csv(str(path), str(tmp_path / "md.csv"))
    assert (tmp_path / "md.csv").stat().st_size > 0
    return json.loads(smoothed.read_text())


# ---------------------------------------------------------------- MegaDetector, whole photos


def test_whole_image_megadetector_output_passes_the_tools(tmp_path):
    card = tmp_path / "card"
    (card / "day1").mkdir(parents=True)
    lions = sorted((REAL_DATA / "lion").glob("*.jpg"))[:3]
    for p in lions:
        (card / "day1" / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (320, 240), (128, 128, 128)).save(card / "day1" / "empty.jpg")
    (card / "broken.jpg").write_bytes(b"no")
    out = tmp_path / "md.json"
    wildwatch("classify", card, "--format", "megadetector", "--output", out, "-q", code=1)
    assert md_validate(out) == []
    doc = json.loads(out.read_text())
    files = {im["file"]: im for im in doc["images"]}
    assert set(files) == {*(f"day1/{p.name}" for p in lions), "day1/empty.jpg", "broken.jpg"}  # relative to card
    assert files["day1/empty.jpg"]["detections"] == [] and files["broken.jpg"]["detections"] is None
    named = [files[f"day1/{p.name}"] for p in lions]
    assert all(im["detections"][0]["category"] == "1" for im in named)
    lion_id = next(k for k, v in doc["classification_categories"].items() if v == "lion")
    assert sum(im["detections"][0]["classifications"][0][0] == lion_id for im in named) >= 2
    assert doc["classification_category_descriptions"][lion_id].endswith(";mammalia;carnivora;felidae;panthera;leo;lion")
    assert "no detector ran" in doc["info"]["classifier_metadata"]["conf"]
    smoothed = md_smooth_and_convert(out, tmp_path)
    assert len(smoothed["images"]) == len(doc["images"])


# ---------------------------------------------------------------- MegaDetector boxes in, classified out


def scene_with_animal(scene: Image.Image, animal: Image.Image, box: tuple[float, float, float, float]) -> Image.Image:
    """``animal`` pasted into ``scene`` at the normalised box [x, y, w, h]."""
    out = scene.copy()
    x, y, w, h = box
    W, H = out.size
    out.paste(animal.convert("RGB").resize((int(w * W), int(h * H))), (int(x * W), int(y * H)))
    return out


def test_megadetector_boxes_are_classified_and_written_back(tmp_path):
    scenes = sorted(p for p in (OOD_DATA / "landscape").glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    scene = Image.open(scenes[0]).convert("RGB").resize((1280, 960))
    lion = Image.open(min((REAL_DATA / "lion").glob("*.jpg")))
    rhino = Image.open(min((REAL_DATA / "rhino").glob("*.jpg")))
    root = tmp_path / "camera"
    root.mkdir()
    lion_box, rhino_box = [0.05, 0.40, 0.30, 0.32], [0.60, 0.45, 0.32, 0.30]
    scene_with_animal(scene_with_animal(scene, lion, lion_box), rhino, rhino_box).save(root / "two.jpg")
    scene_with_animal(scene, lion, [0.35, 0.30, 0.25, 0.30]).save(root / "lion_and_person.jpg")
    scene.save(root / "empty.jpg")
    md = {"info": {"format_version": "1.3", "detector": "md_v5a.0.0.pt", "classifier": "another classifier"},
          "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"},
          "classification_categories": {"0": "deer", "1": "boar"},  # as SpeciesNet's output carries its own
          "images": [
              {"file": "two.jpg", "detections": [
                  {"category": "1", "conf": 0.93, "bbox": lion_box},
                  {"category": "1", "conf": 0.88, "bbox": rhino_box},
                  {"category": "1", "conf": 0.05, "bbox": [0.4, 0.05, 0.1, 0.1],  # below the threshold
                   "classifications": [["1", 0.6]]}]},
              {"file": "lion_and_person.jpg", "detections": [
                  {"category": "1", "conf": 0.81, "bbox": [0.35, 0.30, 0.25, 0.30]},
                  {"category": "2", "conf": 0.90, "bbox": [0.7, 0.2, 0.1, 0.5]}]},
              {"file": "empty.jpg", "detections": []},
              {"file": "gone.jpg", "detections": [{"category": "1", "conf": 0.7, "bbox": [0.1, 0.1, 0.2, 0.2]}]},
              {"file": "corrupt.jpg", "failure": "Failure image access", "detections": None}]}
    src = tmp_path / "md.json"
    src.write_text(json.dumps(md))
    out = tmp_path / "md_classified.json"
    proc = wildwatch("classify", "--detections", src, root, "--output", out, code=1)  # gone.jpg cannot be read
    assert "3 animal boxes" in proc.stderr  # the faint box is left alone; gone.jpg cannot be read
    assert md_validate(out) == []
    doc = json.loads(out.read_text())
    cats = doc["classification_categories"]
    files = {im["file"]: im for im in doc["images"]}
    lion_det, rhino_det, faint = files["two.jpg"]["detections"]
    assert cats[lion_det["classifications"][0][0]] == "lion" and lion_det["conf"] == 0.93  # detector conf kept
    assert cats[rhino_det["classifications"][0][0]] == "rhino"
    assert "classifications" not in faint  # the other classifier's answer is kept, by name, with its classifier
    assert faint["classifications_original"] == {"classifier": "another classifier", "classifications": [["boar", 0.6]]}
    assert doc["info"]["classifier_metadata"]["previous_classifier"] == "another classifier"
    animal, person = files["lion_and_person.jpg"]["detections"]
    assert cats[animal["classifications"][0][0]] == "lion" and "classifications" not in person
    assert files["lion_and_person.jpg"]["wildwatch"]["species"] == "lion"
    assert files["two.jpg"]["wildwatch"]["species"] in ("lion", "rhino")
    assert files["empty.jpg"]["detections"] == [] and files["empty.jpg"]["wildwatch"]["species"] == "empty"
    assert "gone.jpg" in files["gone.jpg"]["wildwatch"]["error"]
    assert files["corrupt.jpg"]["detections"] is None and "wildwatch" not in files["corrupt.jpg"]
    assert doc["info"]["detector"] == "md_v5a.0.0.pt" and doc["info"]["classifier"].startswith("wildwatch")
    md_smooth_and_convert(out, tmp_path)


def test_a_person_alone_is_the_human_answer(tmp_path):
    root = tmp_path / "cam"
    root.mkdir()
    Image.new("RGB", (640, 480), (90, 100, 80)).save(root / "p.jpg")
    src = tmp_path / "md.json"
    src.write_text(json.dumps({"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal", "2": "person"},
                               "images": [{"file": "p.jpg", "detections": [
                                   {"category": "2", "conf": 0.95, "bbox": [0.2, 0.1, 0.3, 0.8]}]}]}))
    out = tmp_path / "out.json"
    wildwatch("classify", "--detections", src, root, "--output", out, "-q")
    [im] = json.loads(out.read_text())["images"]
    assert im["wildwatch"] == {"species": "human"} and im["detections"][0]["category"] == "2"


def test_square_crops_with_a_margin_stay_inside_the_image():
    from wildwatch.inference.megadetector import square_crop_box

    assert square_crop_box([0.25, 0.25, 0.5, 0.25], 1000, 1000, margin=0.1) == (200, 75, 800, 675)
    left, top, right, bottom = square_crop_box([0.9, 0.9, 0.1, 0.1], 1000, 800, margin=0.5)
    assert right == 1000 and bottom == 800 and right - left == bottom - top == 200
    assert square_crop_box([0.0, 0.0, 1.0, 1.0], 640, 480) == (0, 0, 640, 480)


def test_a_file_that_is_not_a_batch_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text(json.dumps({"images": []}))
    proc = wildwatch("classify", "--detections", bad, tmp_path, "--output", tmp_path / "o.json", code=2)
    assert "not a MegaDetector batch file" in proc.stderr and "Traceback" not in proc.stderr


# ---------------------------------------------------------------- Camtrap DP


def photo(path: Path, when: str | None = None, offset: str | None = None, gps: tuple[float, float] | None = None):
    img = Image.new("RGB", (320, 240), (128, 128, 128))
    exif = Image.Exif()
    if when:
        exif.get_ifd(0x8769)[0x9003] = when
    if offset:
        exif.get_ifd(0x8769)[0x9011] = offset
    if gps:
        from test_field import _dms

        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = ("N" if gps[0] >= 0 else "S"), _dms(gps[0]), ("E" if gps[1] >= 0 else "W"), _dms(gps[1])
    img.save(path, exif=exif)
    return path


def test_camtrap_dp_from_classify_passes_the_official_profile_and_schemas(tmp_path):
    from conftest import camtrap_dp_errors

    card = tmp_path / "card" / "DCIM"
    card.mkdir(parents=True)
    photo(card / "tz.jpg", "2024:03:05 06:41:09", "+03:00", gps=(-1.2921, 36.8219))
    photo(card / "tz2.jpg", "2024:03:06 18:02:00", "+03:00", gps=(-1.2921, 36.8219))
    for p in sorted((REAL_DATA / "lion").glob("*.jpg"))[:2]:
        (card / p.name).write_bytes(p.read_bytes())  # no EXIF time, no GPS
    dp = tmp_path / "package"
    wildwatch("classify", tmp_path / "card", "--format", "camtrapdp", "--output", dp, "--location", "-2.33,34.83", "-q")
    assert camtrap_dp_errors(dp) == []
    media = {m["fileName"]: m for m in csv_rows(dp / "media.csv")}
    assert media["tz.jpg"]["timestamp"] == "2024-03-05T06:41:09+03:00"  # the photo's own offset, not UTC
    assert media["tz.jpg"]["filePath"] == "DCIM/tz.jpg" and media["tz.jpg"]["mediaComments"] == ""
    lion = next(m for name, m in media.items() if name not in ("tz.jpg", "tz2.jpg"))
    assert "file modification time" in lion["mediaComments"]
    deps = {d["deploymentID"]: d for d in csv_rows(dp / "deployments.csv")}
    assert deps[media["tz.jpg"]["deploymentID"]]["timestampIssues"] == "false"
    assert deps[lion["deploymentID"]]["timestampIssues"] == "true"
    assert deps[media["tz.jpg"]["deploymentID"]]["deploymentStart"] == "2024-03-05T06:41:09+03:00"
    pkg = json.loads((dp / "datapackage.json").read_text())
    assert {lic["scope"] for lic in pkg["licenses"]} == {"data", "media"}
    assert pkg["spatial"]["type"] == "MultiPoint" and pkg["temporal"]["start"] == "2024-03-05"
    obs = csv_rows(dp / "observations.csv")
    assert all(o["classificationTimestamp"].endswith("+00:00") and "." not in o["classificationTimestamp"]
               for o in obs)


def csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_camtrap_checker_catches_what_the_standard_forbids(tmp_path):
    """The checker itself: the mistakes an earlier writer made are each found."""
    import csv
    import shutil

    from conftest import camtrap_dp_errors

    card = tmp_path / "card"
    card.mkdir()
    photo(card / "a.jpg", "2024:03:05 06:41:09", "+03:00", gps=(-1.2921, 36.8219))
    good = tmp_path / "good"
    wildwatch("classify", card, "--format", "camtrapdp", "--output", good, "-q")
    assert camtrap_dp_errors(good) == []

    def broken(name: str, edit) -> list[str]:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        edit(folder)
        return camtrap_dp_errors(folder)

    def one_licence(folder):
        pkg = json.loads((folder / "datapackage.json").read_text())
        pkg["licenses"] = pkg["licenses"][:1]
        (folder / "datapackage.json").write_text(json.dumps(pkg))

    def edit_media(column, value):
        def edit(folder):
            rows = csv_rows(folder / "media.csv")
            rows[0][column] = value
            with open(folder / "media.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)
        return edit

    assert any("licenses" in e for e in broken("licence", one_licence))
    assert broken("absolute", edit_media("filePath", str(card / "a.jpg")))
    assert broken("dotdot", edit_media("filePath", "../card/a.jpg"))
    assert broken("millis", edit_media("timestamp", "2024-03-05T06:41:09.123+03:00"))


def test_camtrap_dp_from_monitor_events_with_fractional_times(tmp_path):
    from conftest import camtrap_dp_errors

    from wildwatch.store.events import EventStore, Sighting

    db = tmp_path / "events.db"
    store = EventStore(db)
    store.add(Sighting("cam.mp4", "rhino", 0.9, "2026-05-01T05:10:00.302+00:00", "2026-05-01T05:11:30.910+00:00",
                       "Rhinoceros", "NT–CR", True))
    store.close()
    dp = tmp_path / "events"
    wildwatch("events", "--db", db, "--format", "camtrapdp", "--output", dp, "--location", "-2.33,34.83")
    assert camtrap_dp_errors(dp) == []
    [o] = csv_rows(dp / "observations.csv")
    assert o["eventStart"] == "2026-05-01T05:10:00+00:00" and o["observationLevel"] == "event"


# ---------------------------------------------------------------- the REST API, through a generated client


@pytest.fixture(scope="module")
def generated_client(tmp_path_factory):
    """A Python client generated from the server's /openapi.json by openapi-python-client."""
    import importlib
    import urllib.request

    from test_hardening import start_server

    proc, port = start_server()
    try:
        spec = urllib.request.urlopen(f"http://127.0.0.1:{port}/openapi.json").read()
    finally:
        proc.terminate()
        proc.wait(10)
    where = tmp_path_factory.mktemp("client")
    (where / "spec.json").write_bytes(spec)
    (where / "config.yaml").write_text("post_hooks: []\npackage_name_override: wildwatch_client\n")
    subprocess.run([str(Path(sys.executable).parent / "openapi-python-client"), "generate", "--path", "spec.json",
                    "--config", "config.yaml", "--meta", "none", "--output-path", "wildwatch_client"],
                   cwd=where, check=True, capture_output=True, timeout=300)
    sys.path.insert(0, str(where))
    try:
        yield importlib.import_module("wildwatch_client")
    finally:
        sys.path.remove(str(where))


def lion_upload(client_pkg):
    from io import BytesIO

    types = importlib_module(client_pkg, "types")
    body = importlib_module(client_pkg, "models").BodyClassifyV1ClassifyPost
    photo = min((REAL_DATA / "lion").glob("*.jpg"))
    return body(files=[types.File(payload=BytesIO(photo.read_bytes()), file_name=photo.name, mime_type="image/jpeg")])


def importlib_module(pkg, name):
    import importlib

    return importlib.import_module(f"{pkg.__name__}.{name}")


def test_a_generated_client_classifies_a_photo(generated_client):
    from test_hardening import start_server

    classify = importlib_module(generated_client, "api.default.classify_v1_classify_post")
    proc, port = start_server()
    try:
        client = generated_client.Client(base_url=f"http://localhost:{port}")
        answer = classify.sync(client=client, body=lion_upload(generated_client))
        [p] = answer.predictions
        assert p.species == "lion" and p.iucn_status == "VU" and 0 < p.confidence <= 1
        assert p.top_k[0].species == "lion"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_generated_client_sends_the_api_key(generated_client):
    from test_hardening import KEY, start_server

    classify = importlib_module(generated_client, "api.default.classify_v1_classify_post")
    proc, port = start_server(env={"WILDWATCH_API_KEY": KEY})
    try:
        anonymous = generated_client.Client(base_url=f"http://localhost:{port}")
        refused = classify.sync_detailed(client=anonymous, body=lion_upload(generated_client))
        assert refused.status_code == 401 and "API key" in refused.parsed.detail
        keyed = generated_client.AuthenticatedClient(base_url=f"http://localhost:{port}", token=KEY, prefix="",
                                                     auth_header_name="X-API-Key")
        assert classify.sync(client=keyed, body=lion_upload(generated_client)).predictions[0].species == "lion"
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_openapi_description_declares_the_key_and_the_refusals():
    from wildwatch.inference.predictor import Predictor
    from wildwatch.service.app import create_app

    spec = create_app(Predictor.from_file(None)).openapi()
    assert spec["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key", "description": "the server's API key, when it has one"}
    classify = spec["paths"]["/v1/classify"]["post"]
    assert {"200", "401", "413"} <= set(classify["responses"])
    assert classify["security"] == [{"APIKeyHeader": []}]
    body = spec["components"]["schemas"][classify["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
                                         .rsplit("/", 1)[-1]]
    assert body["properties"]["files"]["items"] == {"type": "string", "format": "binary"}
    assert classify["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ClassifyResponse")
