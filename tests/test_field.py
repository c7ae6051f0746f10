"""Where a photo was taken, what that changes, and the camera-trap formats."""

import json
import random
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import camtrap_dp_errors, csv_rows, draw_shape
from PIL import Image

from wildwatch.field import Place, local_status, possible_in, range_table, read_place
from wildwatch.inference import Predictor

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def _dms(value: float):
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = round(((value - d) * 60 - m) * 60, 2)
    return (Fraction(d), Fraction(m), Fraction(s).limit_denominator(100))


def photo_with_gps(path: Path, lat: float, lon: float, when: str = "2024:03:05 06:41:09", seed: int = 0,
                   orientation: int | None = None, size: tuple[int, int] = (240, 240)) -> Path:
    img = draw_shape("red_circles", random.Random(seed), 240).resize(size)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = ("N" if lat >= 0 else "S"), _dms(lat)
    gps[3], gps[4] = ("E" if lon >= 0 else "W"), _dms(lon)
    exif.get_ifd(0x8769)[0x9003] = when
    img.save(path, exif=exif)
    return path


@pytest.fixture(scope="module")
def bundled():
    return Predictor.from_file(None, backend="torch")


def test_exif_gps_gives_country_and_time(tmp_path):
    kenya = read_place(photo_with_gps(tmp_path / "ke.jpg", -1.2921, 36.8219))
    assert kenya.country == "KE" and kenya.country_source == "exif_gps"
    assert abs(kenya.latitude + 1.2921) < 1e-3 and abs(kenya.longitude - 36.8219) < 1e-3
    assert kenya.taken_at == "2024-03-05T06:41:09"
    assert read_place(photo_with_gps(tmp_path / "br.jpg", -3.119, -60.0217)).country == "BR"
    assert read_place(photo_with_gps(tmp_path / "in.jpg", 21.1702, 70.7969)).country == "IN"
    plain = tmp_path / "plain.jpg"
    draw_shape("red_circles", random.Random(1), 64).save(plain)
    assert read_place(plain) == Place()


def test_one_open_gives_the_turned_photo_and_the_same_place(tmp_path):
    from wildwatch.data.loading import load_photo
    from wildwatch.field import place_from_exif

    path = photo_with_gps(tmp_path / "turned.jpg", -1.2921, 36.8219, orientation=6, size=(300, 200))
    img, exif = load_photo(path, draft_size=(64, 64))
    assert img.size == (100, 150) and img.mode == "RGB"  # decoded at half size, turned a quarter (orientation 6)
    assert place_from_exif(exif) == read_place(path) and read_place(path).country == "KE"
    plain = tmp_path / "plain.png"
    draw_shape("red_circles", random.Random(1), 64).save(plain)
    assert place_from_exif(load_photo(plain)[1]) == Place()


def test_range_table_covers_every_class_with_sources():
    table = range_table()
    assert len(table) == 11
    assert all(v["source"].startswith("IUCN Red List") and v["countries"] for v in table.values())
    assert possible_in("jaguars", "BR") and not possible_in("jaguars", "IN")
    assert possible_in("amur_leopard", "KE")  # the class holds ordinary leopards
    assert local_status("amur_leopard", "KE")["status"] == "VU"
    assert local_status("amur_leopard", "RU")["status"] == "CR"
    assert local_status("rhino", "IN")["status"] == "VU" and local_status("rhino", "ZA")["status"] == "NT–CR"
    assert local_status("panthers", "BR")["status"] == "NT" and local_status("panthers", "IN")["status"] == "VU"


def _logits(classes, ranking):
    logits = np.full((1, len(classes)), -5.0)
    for score, name in zip((6.0, 4.0, 2.0), ranking):
        logits[0, classes.index(name)] = score
    return logits


def _plain(bundled):
    """The bundled model with a decision that has no calibration: the confidence is the top probability."""
    import dataclasses

    from wildwatch.models.decision import Decision

    return dataclasses.replace(bundled, decision=Decision(tuple(bundled.classes)))


def test_an_answer_outside_the_range_that_is_not_sure_is_uncertain_with_a_local_species(bundled):
    from wildwatch.models.decision import Outputs

    pred = _plain(bundled)
    out = Outputs(_logits(pred.classes, ["jaguars", "amur_leopard", "cheetahs"]) / 2)  # 0.65 from the photo alone
    [p] = pred.from_outputs(["x.jpg"], out, [Place(country="IN", country_source="given")])
    assert p.out_of_range and p.country == "IN" and "IN" in p.note and p.uncertain and not p.named
    assert p.species == "uncertain" and p.candidates == ("jaguars", "amur_leopard")
    assert p.common_name.startswith("Jaguar or Leopard") and p.threatened
    [same] = pred.from_outputs(["y.jpg"], out, [Place(country="BR")])
    assert not same.out_of_range and same.species == "jaguars" and same.named
    [nowhere] = pred.from_outputs(["z.jpg"], out, [None])
    assert nowhere.country is None and nowhere.iucn_status == "NT"


def test_a_sure_photo_outside_the_range_keeps_its_species_and_is_flagged(bundled):
    from wildwatch.models.decision import Outputs

    pred = _plain(bundled)
    out = Outputs(_logits(pred.classes, ["rhino", "african_elephant", "lion"]) * 3)  # sure from the photo alone
    [p] = pred.from_outputs(["zoo.jpg"], out, [Place(country="RU", country_source="exif_gps")])
    assert p.species == "rhino" and p.confidence > 0.99 and p.named
    assert p.out_of_range and p.note == "outside its wild range: captive or traded?"


def test_impossible_gps_is_ignored_with_a_warning(tmp_path):
    far = read_place(photo_with_gps(tmp_path / "far.jpg", 999.0, 30.0))
    assert far.country is None and far.latitude is None and "impossible GPS" in far.warning
    null = read_place(photo_with_gps(tmp_path / "null.jpg", 0.0, 0.0))
    assert null.country is None and "0,0" in null.warning
    assert read_place(photo_with_gps(tmp_path / "ok.jpg", -1.2921, 36.8219)).warning is None


def megadetector_errors(doc: dict) -> list[str]:
    """Checks of the MegaDetector batch output format, as its specification states them."""
    errors = []
    if "format_version" not in doc.get("info", {}):
        errors.append("info.format_version missing")
    for key in ("detection_categories", "classification_categories"):
        cats = doc.get(key, {})
        if key == "detection_categories" and not cats:
            errors.append("detection_categories missing")
        if not all(k.isdigit() for k in cats):
            errors.append(f"{key} keys must be string-formatted non-negative ints")
    if not isinstance(doc.get("images"), list):
        return errors + ["images must be a list"]
    for im in doc["images"]:
        if "file" not in im:
            errors.append("image without file")
        if isinstance(im.get("failure"), str):
            if im.get("detections"):
                errors.append(f"{im['file']}: failed image with detections")
            continue
        if not isinstance(im.get("detections"), list):
            errors.append(f"{im.get('file')}: processed image needs a detections list")
            continue
        for d in im["detections"]:
            if d["category"] not in doc["detection_categories"]:
                errors.append("unknown detection category")
            if not 0 <= d["conf"] <= 1 or len(d["bbox"]) != 4 or not all(0 <= v <= 1 for v in d["bbox"]):
                errors.append("bad conf or bbox")
            confs = [c for _, c in d.get("classifications", [])]
            if confs != sorted(confs, reverse=True):
                errors.append("classifications must be in descending order")
            if any(k not in doc["classification_categories"] for k, _ in d.get("classifications", [])):
                errors.append("unknown classification category")
    return errors


def test_megadetector_and_camtrap_dp_round_trip(tmp_path, broken_dir):
    folder = tmp_path / "card"
    folder.mkdir()
    photo_with_gps(folder / "a.jpg", -1.2921, 36.8219)
    Image.new("RGB", (200, 150), (128, 128, 128)).save(folder / "grey.jpg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    md = tmp_path / "md.json"
    proc = subprocess.run([WILDWATCH, "classify", str(folder), "--format", "megadetector", "--output", str(md),
                           "--backend", "torch", "-q"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr  # broken.jpg could not be classified; the file is written
    doc = json.loads(md.read_text())
    assert megadetector_errors(doc) == []
    by_file = {im["file"]: im for im in doc["images"]}
    assert set(by_file) == {"a.jpg", "grey.jpg", "broken.jpg"}
    assert "broken.jpg" in by_file["broken.jpg"]["failure"]
    grey = by_file["grey.jpg"]  # none of the species: no animal box, and the image answer says so
    assert grey["detections"] == [] and grey["wildwatch"]["species"] == "unknown"
    assert by_file["broken.jpg"]["detections"] is None

    dp = tmp_path / "dp"
    proc = subprocess.run([WILDWATCH, "classify", str(folder), "--format", "camtrapdp", "--output", str(dp),
                           "--backend", "torch", "-q"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "--location" in proc.stderr  # grey.jpg has no GPS: never a camera at 0,0
    proc = subprocess.run([WILDWATCH, "classify", str(folder), "--format", "camtrapdp", "--output", str(dp),
                           "--backend", "torch", "-q", "--location", "-0.5,36.1"], capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stderr  # broken.jpg again
    assert camtrap_dp_errors(dp) == []
    media = csv_rows(dp / "media.csv")
    obs = csv_rows(dp / "observations.csv")
    events = [o for o in obs if o["observationLevel"] == "event"]
    obs = [o for o in obs if o["observationLevel"] == "media"]
    assert len(media) == 2 and len(obs) == 2  # the broken file has no media record
    assert len(events) == 2 and {o["eventID"] for o in obs} == {o["eventID"] for o in events}  # hours apart
    a = next(m for m in media if m["fileName"] == "a.jpg")
    assert a["filePath"] == "a.jpg"  # relative to the folder classified
    assert a["timestamp"] == "2024-03-05T06:41:09+00:00" and a["mediaComments"].startswith("EXIF time without")
    assert json.loads(a["exifData"])["country"] == "KE"
    grey_obs = next(o for o in obs if o["mediaID"] != a["mediaID"])
    assert grey_obs["observationType"] in ("unknown", "blank") and grey_obs["scientificName"] == ""
    assert grey_obs["observationComments"].startswith("Not one of the 11 species — ")
    deployments = {d["deploymentID"]: d for d in csv_rows(dp / "deployments.csv")}
    assert sorted((d["latitude"], d["longitude"]) for d in deployments.values()) == [("-0.5", "36.1"),
                                                                                     ("-1.2921", "36.8219")]
    assert deployments[a["deploymentID"]]["timestampIssues"] == "true"
    pkg = json.loads((dp / "datapackage.json").read_text())
    assert "broken.jpg" in pkg["description"]
    assert pkg["profile"] == "https://raw.githubusercontent.com/tdwg/camtrap-dp/1.0.2/camtrap-dp-profile.json"
