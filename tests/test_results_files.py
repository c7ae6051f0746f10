"""Other tools' result files read by ``classify --detections`` and ``sort``: MegaDetector's (with
hostile paths and malformed shapes), AddaxAI's and SpeciesNet's; and ``wildwatch sort``."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from test_camtrap import camera_photo
from test_formats import md_validate, wildwatch

from wildwatch.inference.megadetector import classify_detections
from wildwatch.inference.readers import image_path, read_results

ELEPHANT = "55631055-3e0e-4b7a-9612-dedebe9f78b0;mammalia;proboscidea;elephantidae;loxodonta;africana;african elephant"
OCELOT = "22976d14-d424-4f18-a67a-d8e1689cefcc;mammalia;carnivora;felidae;leopardus;pardalis;ocelot"
BOX = [0.5, 0.4, 0.35, 0.35]  # where camera_photo pastes the animal


@pytest.fixture(scope="module")
def predictor():
    from wildwatch.inference.predictor import Predictor

    return Predictor.from_file(None)


@pytest.fixture()
def camera(tmp_path) -> Path:
    cam = tmp_path / "cam"
    camera_photo(cam / "a.jpg", "lion", "2024:03:05 06:41:00")
    camera_photo(tmp_path / "secret" / "s.jpg", "rhino", "2024:03:05 06:41:00")
    return cam


def md_file(path: Path, images: list, **extra) -> Path:
    doc = {"info": {"format_version": "1.4", "detector": "md_v5a.0.0.pt"},
           "detection_categories": {"1": "animal", "2": "person", "3": "vehicle"}, "images": images, **extra}
    path.write_text(json.dumps(doc))
    return path


def animal(file: str) -> dict:
    return {"file": file, "detections": [{"category": "1", "conf": 0.9, "bbox": BOX}]}


# ---------------------------------------------------------------- paths that leave the folder (issue 28, item 10)


def test_paths_that_leave_the_folder_are_per_row_errors_and_never_read(camera, tmp_path, predictor, monkeypatch):
    secret = (tmp_path / "secret" / "s.jpg").resolve()
    (camera / "link.jpg").symlink_to(secret)
    images = [animal("a.jpg"), animal("../secret/s.jpg"), animal(str(secret)), animal("sub/../../secret/s.jpg"),
              animal("C:\\photos\\s.jpg"), animal("link.jpg"), animal("..\\secret\\s.jpg")]
    doc = read_results(md_file(tmp_path / "md.json", images))
    read = []
    original = type(predictor).predict_images  # a Predictor never changes: the spy goes on its class
    def spy(self, imgs, sources=None, *a, **k):
        read.extend(sources)
        return original(self, imgs, sources, *a, **k)

    monkeypatch.setattr(type(predictor), "predict_images", spy)
    doc, summary = classify_detections(doc, camera, predictor)
    assert read == ["a.jpg"] and summary.images_failed == 6
    errors = [im["wildwatch"]["error"] for im in doc["images"][1:]]
    assert all("not read" in e for e in errors)
    assert "leaves the folder" in errors[0] and "absolute path" in errors[1] and "--image-root" in errors[1]
    assert "leaves the folder" in errors[2] and "absolute path" in errors[3] and "outside the folder given" in errors[4]
    assert all("classifications" not in im["detections"][0] for im in doc["images"][1:])
    assert doc["images"][0]["wildwatch"]["species"] == "lion"


def test_absolute_paths_from_another_machine_are_re_rooted(camera, tmp_path):
    src = md_file(tmp_path / "md.json", [animal("/mnt/card7/a.jpg"), animal("D:\\card7\\a.jpg")])
    out = tmp_path / "out.json"
    proc = wildwatch("classify", "--detections", src, camera, "--image-root", "/mnt/card7", "--output", out, "-q",
                     code=1)
    assert "1 errors" in proc.stderr  # the Windows path keeps its other root
    first, second = json.loads(out.read_text())["images"]
    assert first["file"] == "a.jpg" and first["wildwatch"]["species"] == "lion"
    assert "absolute path" in second["wildwatch"]["error"]
    assert image_path(camera, "D:\\card7\\a.jpg", "D:\\card7")[0] == camera.resolve() / "a.jpg"
    assert md_validate(out) == []


@pytest.mark.parametrize("doc, message", [
    ([1, 2, 3], "its top level is a list"),
    ({"images": {"a.jpg": []}, "detection_categories": {"1": "animal"}}, "images: Input should be a valid list"),
    ({"images": [], "detection_categories": ["animal"]}, "detection_categories: Input should be a valid dict"),
    ({"images": [], "detection_categories": {"1": "deer"}}, "have no 'animal'"),
])
def test_a_results_file_that_cannot_be_read_is_one_clear_error(tmp_path, doc, message):
    src = tmp_path / "bad.json"
    src.write_text(json.dumps(doc))
    proc = wildwatch("classify", "--detections", src, tmp_path, "--output", tmp_path / "o.json", code=2)
    assert message in proc.stderr and str(src) in proc.stderr and "Traceback" not in proc.stderr


def test_malformed_entries_are_per_row_failures_and_the_rest_is_classified(camera, tmp_path):
    images = [animal("a.jpg"), "a.jpg",
              {"file": "a.jpg", "detections": [{"category": "1", "conf": 0.9, "bbox": [0.1, 0.2, 0.3]}]},
              {"file": "a.jpg", "detections": [{"category": "1", "conf": "high", "bbox": BOX}]},
              {"file": "a.jpg", "detections": {"category": "1"}},
              {"file": "a.jpg", "detections": [{"category": "1", "conf": float("nan"), "bbox": BOX}]},
              {"detections": []}, {"file": 7, "detections": []}]
    src = tmp_path / "md.json"
    src.write_text(json.dumps({"info": {"format_version": "1.3"}, "detection_categories": {"1": "animal"},
                               "images": images}).replace("NaN", "NaN"))
    out = tmp_path / "out.json"
    proc = wildwatch("classify", "--detections", src, camera, "--output", out, "-q", code=1)
    assert "Traceback" not in proc.stderr and "7 errors" in proc.stderr
    doc = json.loads(out.read_text())
    assert md_validate(out) == []  # the failures are MegaDetector failures: the tools still read the file
    assert doc["images"][0]["wildwatch"]["species"] == "lion"
    failures = [im["failure"] for im in doc["images"][1:]]
    assert all(f.startswith("malformed entry in the results file") for f in failures)
    assert "bbox" in failures[1] and "conf" in failures[2] and "detections" in failures[3] and "conf" in failures[4]
    assert doc["images"][6]["file"] == "(entry 6 without a file name)" and "file" in failures[5]


def test_an_oversized_or_unreadable_results_file_is_refused_before_parsing(tmp_path, monkeypatch):
    from wildwatch.errors import DataError
    from wildwatch.inference import readers

    big = tmp_path / "big.json"
    big.write_text(" " * 2000)
    monkeypatch.setattr(readers, "MAX_FILE_BYTES", 1000)
    with pytest.raises(DataError, match="over the limit"):
        read_results(big)
    (tmp_path / "cut.json").write_text('{"images": [')
    with pytest.raises(DataError, match="not readable JSON"):
        read_results(tmp_path / "cut.json")


# ---------------------------------------------------------------- AddaxAI and SpeciesNet


def test_addaxai_results_with_species_in_the_detection_categories_are_read_and_their_answers_kept(camera, tmp_path):
    """AddaxAI moves a classified box into a species category, its confidence into the species'
    and the detector's into prev_conf; leftover animals are 'unidentified animal'."""
    doc = {"info": {"format_version": "1.3", "detector": "md_v5a.0.0.pt"},
           "detection_categories": {"1": "unidentified animal", "2": "person", "3": "vehicle", "4": "lion",
                                    "5": "zebra"},
           "classification_categories": {"1": "lion", "2": "zebra"}, "forbidden_classes": [],
           "images": [{"file": "a.jpg", "detections": [
               {"category": "4", "conf": 0.97, "bbox": BOX, "prev_conf": 0.88, "prev_category": "1",
                "classifications": [["1", 0.97], ["2", 0.02]]},
               {"category": "1", "conf": 0.4, "bbox": [0.0, 0.0, 0.1, 0.1]},
               {"category": "2", "conf": 0.7, "bbox": [0.8, 0.1, 0.1, 0.3]}]}]}
    src = tmp_path / "image_recognition_file.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "out.json"
    wildwatch("classify", "--detections", src, camera, "--output", out, "-q")
    assert md_validate(out) == []
    [im] = json.loads(out.read_text())["images"]
    first, leftover, person = im["detections"]
    assert first["category"] == "1" and first["conf"] == 0.88  # the detector's confidence is back
    assert first["classifications_original"] == {"classifier": "AddaxAI",
                                                  "classifications": [["lion", 0.97], ["zebra", 0.02]]}
    assert leftover["category"] == "1" and person["category"] == "2"
    assert im["wildwatch"]["species"] == "lion"


def speciesnet_predictions(folder: Path) -> dict:
    """SpeciesNet's native output for two photos, absolute paths as its run_model writes them."""
    return {"predictions": [
        {"filepath": str(folder / "a.jpg"), "detections": [{"category": "1", "label": "animal", "conf": 0.93,
                                                           "bbox": BOX,
                                                           "raw_classifications": {"classes": [ELEPHANT, OCELOT],
                                                                                   "scores": [0.99, 0.005]}}],
         "classifications": {"classes": [ELEPHANT, OCELOT], "scores": [0.99, 0.005]},
         "prediction": ELEPHANT, "prediction_score": 0.99, "prediction_source": "classifier",
         "model_version": "4.0.1a"},
        {"filepath": str(folder / "gone.jpg"), "failures": ["DETECTOR"], "model_version": "4.0.1a"}]}


def test_speciesnet_native_predictions_are_read_with_their_answers(camera, tmp_path):
    src = tmp_path / "predictions.json"
    src.write_text(json.dumps(speciesnet_predictions(Path("/data/run1"))))
    out = tmp_path / "out.json"
    wildwatch("classify", "--detections", src, camera, "--image-root", "/data/run1", "--output", out, "-q")
    assert md_validate(out) == []
    first, failed = json.loads(out.read_text())["images"]
    original = first["classifications_original"]
    assert original["prediction"] == "african elephant" and original["score"] == 0.99
    assert original["classifier"] == "SpeciesNet 4.0.1a" and original["classifications"][1] == ["ocelot", 0.005]
    assert first["detections"][0]["classifications_original"]["classifications"][0] == ["african elephant", 0.99]
    assert first["wildwatch"]["species"] == "lion" and first["file"] == "a.jpg"
    assert failed["detections"] is None and "SpeciesNet failed" in failed["failure"]


def test_a_speciesnet_file_converted_by_megadetector_keeps_speciesnet_s_answers(camera, tmp_path):
    from megadetector.utils.wi_taxonomy_utils import generate_md_results_from_predictions_json

    native = tmp_path / "predictions.json"
    native.write_text(json.dumps({"info": {"format_version": "1.0"}} | speciesnet_predictions(camera)))
    md = tmp_path / "md_from_speciesnet.json"
    generate_md_results_from_predictions_json(str(native), str(md), base_folder=str(camera) + "/")
    out = tmp_path / "out.json"
    wildwatch("classify", "--detections", md, camera, "--output", out, "-q")  # gone.jpg: SpeciesNet's own failure
    first = json.loads(out.read_text())["images"][0]
    [det] = first["detections"]
    assert det["classifications_original"]["classifications"][0] == ["african elephant", 0.99]
    assert det["classifications_original"]["classifier"]
    assert first["wildwatch"]["species"] == "lion"


# ---------------------------------------------------------------- sort


def sorted_tree(dest: Path) -> dict[str, list[str]]:
    return {d.name: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file())
            for d in sorted(dest.iterdir())}


def sort_card(tmp_path: Path) -> tuple[Path, Path]:
    """A card with a lion, a rhino named unsurely, a deer (unknown), a person, an empty frame, and
    a row that points outside the card; its MegaDetector file as classify writes it."""
    card = tmp_path / "card"
    for name in ("lion", "rhino", "deer", "person", "empty"):
        camera_photo(card / "day1" / f"{name}.jpg", "lion" if name == "lion" else None, "2024:03:05 06:41:00")
    camera_photo(tmp_path / "outside.jpg", None, None)
    lion_cat = {"0": "lion", "1": "rhino"}
    det = lambda cat, conf, bbox, **kw: {"category": cat, "conf": conf, "bbox": bbox, **kw}
    images = [
        {"file": "day1/lion.jpg", "detections": [det("1", 0.9, BOX, classifications=[["0", 0.95]]),
                                                 det("2", 0.8, [0.05, 0.1, 0.2, 0.6])]},
        {"file": "day1/rhino.jpg", "detections": [det("1", 0.7, BOX, classifications=[["1", 0.35]])]},
        {"file": "day1/deer.jpg", "detections": [det("1", 0.8, BOX, looks_like="impala", looks_like_kind="animal")]},
        {"file": "day1/person.jpg", "detections": [det("1", 0.6, [0.3, 0.2, 0.2, 0.6], looks_like_kind="object")],
         "wildwatch": {"species": "human"}},
        {"file": "day1/empty.jpg", "detections": []},
        {"file": "../outside.jpg", "detections": []}]
    md = md_file(tmp_path / "md.json", images, classification_categories=lion_cat)
    return card, md


def test_sort_puts_each_photo_in_the_folder_of_its_answer(tmp_path):
    card, md = sort_card(tmp_path)
    dest = tmp_path / "sorted"
    proc = wildwatch("sort", md, dest, "--root", card, code=1)  # ../outside.jpg is refused
    assert "leaves the folder" in proc.stderr and "5 photos sorted" in proc.stderr
    assert sorted_tree(dest) == {"empty": ["day1/empty.jpg"], "lion": ["day1/lion.jpg"], "unknown":
                                 ["day1/deer.jpg", "day1/person.jpg"], "unsure": ["day1/rhino.jpg"]}
    assert (dest / "lion" / "day1" / "lion.jpg").read_bytes() == (card / "day1" / "lion.jpg").read_bytes()
    listed = tmp_path / "listed"
    wildwatch("sort", md, listed, "--root", card, "--species", "rhino", "--min-confidence", "0.3", "--link", code=1)
    tree = sorted_tree(listed)
    assert tree["not_on_list"] == ["day1/lion.jpg"] and tree["rhino"] == ["day1/rhino.jpg"]
    assert os.stat(listed / "rhino" / "day1" / "rhino.jpg").st_ino == os.stat(card / "day1" / "rhino.jpg").st_ino
    bad = wildwatch("sort", md, tmp_path / "x", "--species", "lions", code=2)
    assert "lions not among the classes" in bad.stderr


def test_blur_people_hides_person_boxes_and_unplaced_boxes_and_drops_exif(tmp_path):
    import numpy as np
    from PIL import Image

    card, md = sort_card(tmp_path)
    dest = tmp_path / "shared"
    proc = wildwatch("sort", md, dest, "--root", card, "--blur-people", code=1)
    assert "2 with people blurred" in proc.stderr
    before = np.asarray(Image.open(card / "day1" / "lion.jpg").convert("RGB"), np.float32)
    after_img = Image.open(dest / "lion" / "day1" / "lion.jpg")
    after = np.asarray(after_img.convert("RGB"), np.float32)
    assert not after_img.getexif()  # no camera, time or GPS in a shared copy
    person = (slice(int(0.15 * 1200), int(0.65 * 1200)), slice(int(0.08 * 1600), int(0.2 * 1600)))
    lion = (slice(int(0.5 * 1200), int(0.7 * 1200)), slice(int(0.6 * 1600), int(0.8 * 1600)))
    detail = lambda a: float(np.abs(np.diff(a, axis=1)).mean())
    assert detail(after[person]) < 0.3 * detail(before[person])  # blurred
    assert abs(detail(after[lion]) - detail(before[lion])) < 0.2 * detail(before[lion])  # the lion is not
    unplaced = np.asarray(Image.open(dest / "unknown" / "day1" / "person.jpg").convert("RGB"), np.float32)
    box = (slice(int(0.3 * 1200), int(0.75 * 1200)), slice(int(0.33 * 1600), int(0.47 * 1600)))
    original = np.asarray(Image.open(card / "day1" / "person.jpg").convert("RGB"), np.float32)
    assert detail(unplaced[box]) < 0.3 * detail(original[box])


def test_blur_people_blurs_the_whole_photo_when_a_person_was_seen_without_a_box(tmp_path):
    import numpy as np
    from PIL import Image

    card = tmp_path / "card"
    camera_photo(card / "p.jpg", None, None)
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"source": str(card / "p.jpg"), "species": "unknown", "unknown": True,
                                "looks_like_kind": "person", "looks_like": "", "error": None}) + "\n")
    wildwatch("sort", rows, tmp_path / "out", "--root", card, "--blur-people")
    after = np.asarray(Image.open(tmp_path / "out" / "person" / "p.jpg").convert("RGB"), np.float32)
    before = np.asarray(Image.open(card / "p.jpg").convert("RGB"), np.float32)
    detail = lambda a: float(np.abs(np.diff(a, axis=1)).mean())
    assert detail(after) < 0.3 * detail(before)


def test_classify_with_a_species_list_and_sort_its_rows(tmp_path):
    examples = Path(__file__).resolve().parents[1] / "examples"
    rows = tmp_path / "rows.csv"
    proc = wildwatch("classify", examples, "--species", "lion,jaguars", "--output", rows)
    assert "rhino.jpg\tnot on the species list — Rhinoceros" in proc.stdout
    by_name = {Path(r["source"]).name: r for r in csv.DictReader(rows.open())}
    rhino = by_name["rhino.jpg"]
    assert rhino["off_list"] == "rhino" and rhino["unknown"] == "True" and rhino["species"] == "unknown"
    assert rhino["looks_like"] == "" and not rhino["confidence"]  # no species probability for a photo set aside
    assert all(r["off_list"] == "" for n, r in by_name.items() if n != "rhino.jpg")
    wildwatch("sort", rows, tmp_path / "sorted", "--root", examples.parent)
    tree = sorted_tree(tmp_path / "sorted")
    assert tree["not_on_list"] == ["examples/rhino.jpg"] and "rhino" not in tree
    assert len(tree["unknown"]) == 3
    # kept: the same photos without a list
    wildwatch("classify", examples, "--output", rows, "--overwrite", "-q")
    assert {Path(r["source"]).name: r["species"] for r in csv.DictReader(rows.open())}["rhino.jpg"] == "rhino"
    bad = wildwatch("classify", examples, "--species", "lions", code=2)
    assert "lions not among the model's classes" in bad.stderr
