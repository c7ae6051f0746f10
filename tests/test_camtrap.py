"""The camera-trap workflow end to end: the built-in detector's boxes classified, bursts grouped into
events, counts, and the outputs checked with the field's own tools (MegaDetector's validator,
smoothing, folder separation and preview; the official Camtrap DP profile; COCO Camera Traps'
integrity check). The photos are made here: real animals pasted into landscapes, with EXIF times."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import OOD_DATA, REAL_DATA, camtrap_dp_errors
from PIL import Image

from wildwatch.inference.batch import ClassifyOptions, write_batch

MAKE, MODEL, SERIAL = 0x010F, 0x0110, 0xA431


def camera_photo(path: Path, animal: str | None, when: str | None, serial: str = "A1", at=(880, 540),
                 size=(480, 360), scene: int = 0) -> Path:
    """A 1600 x 1200 camera-trap photo: a landscape with a real animal pasted in, the camera's EXIF
    make, model and serial, and its capture time (none when ``when`` is None)."""
    scenes = sorted((OOD_DATA / "landscape").glob("*.jpg"))
    img = Image.open(scenes[scene]).convert("RGB").resize((1600, 1200))
    if animal:
        img.paste(Image.open(min((REAL_DATA / animal).glob("*.jpg"))).convert("RGB").resize(size), at)
    exif = Image.Exif()
    exif[MAKE], exif[MODEL] = "Reconyx", "HC600"
    exif.get_ifd(0x8769)[SERIAL] = serial
    if when:
        exif.get_ifd(0x8769)[0x9003] = when
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, exif=exif, quality=90)
    return path


@pytest.fixture(scope="module")
def card(tmp_path_factory) -> Path:
    """Two cameras: a burst of three lion photos a second apart, a rhino five minutes later and an
    empty frame on camera A; a lion at the same time on camera B, and a photo without EXIF time;
    and a broken file."""
    root = tmp_path_factory.mktemp("card")
    for k in range(3):
        camera_photo(root / "cam_a" / f"IMG_000{k}.JPG", "lion", f"2024:03:05 06:41:0{k}", at=(880 - 40 * k, 540))
    camera_photo(root / "cam_a" / "IMG_0003.JPG", "rhino", "2024:03:05 06:46:00")
    camera_photo(root / "cam_a" / "IMG_0004.JPG", None, "2024:03:05 06:50:00")
    camera_photo(root / "cam_b" / "IMG_0001.JPG", "lion", "2024:03:05 06:41:01", serial="B7")
    camera_photo(root / "cam_b" / "IMG_0002.JPG", None, None, serial="B7", scene=1)
    (root / "cam_b" / "broken.jpg").write_bytes(b"\xff\xd8 not a photo")
    return root


@pytest.fixture(scope="module")
def detected(card):
    """The card through classify --detect once; the batch formats are written from these answers."""
    from wildwatch.inference.batch import _detect_pipeline, _predictor

    opts = ClassifyOptions(paths=[card], detect=True)
    predictor = _predictor(opts)
    pipe = _detect_pipeline(opts, predictor)
    preds = list(pipe.predict_paths([card]))
    return opts, predictor, pipe, preds


def write(detected, tmp_path: Path, fmt: str, name: str, **extra) -> Path:
    opts, predictor, pipe, preds = detected
    out = tmp_path / name
    write_batch(opts.model_copy(update={"format": fmt, "output": out, **extra}), preds, predictor, pipe)
    return out


def by_name(preds) -> dict:
    return {Path(p.source).parent.name + "/" + Path(p.source).name: p for p in preds}


def test_boxes_are_found_classified_and_counted(detected):
    preds = by_name(detected[3])
    lion = preds["cam_a/IMG_0000.JPG"]
    assert lion.species == "lion" and lion.count.get("lion") == 1
    [box] = [d for d in lion.detections if d["label"] == "lion"]
    assert box["conf"] >= 0.3 and not box["whole_photo"] and box["kind"] == "animal"
    x, y, w, h = box["bbox"]
    assert 0.5 <= x + w / 2 <= 0.85 and 0.45 <= y + h / 2 <= 0.8  # where the lion was pasted
    assert preds["cam_a/IMG_0003.JPG"].species == "rhino"
    assert preds["cam_a/IMG_0004.JPG"].detections == () and preds["cam_a/IMG_0004.JPG"].count == {}
    assert "cam_b/broken.jpg" in preds and preds["cam_b/broken.jpg"].error
    assert json.loads(lion.to_row()["detections"])[0]["bbox"] == lion.detections[0]["bbox"]  # rows carry them


def test_megadetector_output_passes_every_tool_and_carries_the_sequences(detected, card, tmp_path):
    from megadetector.postprocessing.validate_batch_results import ValidateBatchResultsOptions, validate_batch_results
    from test_formats import md_smooth_and_convert

    out = write(detected, tmp_path, "megadetector", "md.json")
    options = ValidateBatchResultsOptions()
    options.raise_errors, options.check_image_existence, options.relative_path_base = False, True, str(card)
    assert validate_batch_results(str(out), options)["validation_results"]["errors"] == []
    doc = json.loads(out.read_text())
    files = {im["file"]: im for im in doc["images"]}
    burst = [files[f"cam_a/IMG_000{k}.JPG"] for k in range(3)]
    assert len({im["seq_id"] for im in burst}) == 1 and [im["frame_num"] for im in burst] == [0, 1, 2]
    assert burst[0]["seq_num_frames"] == 3 and burst[0]["wildwatch"]["event_species"] == "lion"
    assert files["cam_a/IMG_0003.JPG"]["seq_id"] != burst[0]["seq_id"]  # five minutes later: another event
    assert files["cam_b/IMG_0001.JPG"]["seq_id"] != burst[0]["seq_id"]  # another camera, the same second
    assert files["cam_b/IMG_0002.JPG"]["wildwatch"]["time_from_file"] is True  # no EXIF time: flagged
    assert files["cam_a/IMG_0004.JPG"]["detections"] == []  # empty only when nothing was seen
    assert files["cam_b/broken.jpg"]["detections"] is None and files["cam_b/broken.jpg"]["failure"]
    lion_box = next(d for d in burst[0]["detections"] if d.get("classifications"))
    assert doc["classification_categories"][lion_box["classifications"][0][0]] == "lion"
    assert doc["info"]["classifier_metadata"]["whole_image"] is False and "YOLOX" in doc["info"]["detector"]
    md_smooth_and_convert(out, tmp_path)  # image-level smoothing parses the taxonomy; CSV export


def test_sequence_smoothing_separation_and_preview_run_on_the_output(detected, card, tmp_path):
    from megadetector.postprocessing.classification_postprocessing import (
        ClassificationSmoothingOptions,
        smooth_classification_results_sequence_level,
    )
    from megadetector.postprocessing.postprocess_batch_results import PostProcessingOptions, process_batch_results
    from megadetector.postprocessing.separate_detections_into_folders import (
        SeparateDetectionsIntoFoldersOptions,
        separate_detections_into_folders,
    )

    md = write(detected, tmp_path, "megadetector", "md.json")
    coco = write(detected, tmp_path, "coco", "coco.json")
    smoothed = tmp_path / "seq.json"
    smooth_classification_results_sequence_level(str(md), str(coco), str(smoothed), ClassificationSmoothingOptions())
    assert len(json.loads(smoothed.read_text())["images"]) == 8
    sep = SeparateDetectionsIntoFoldersOptions(0.2)
    sep.results_file, sep.base_input_folder, sep.base_output_folder = str(md), str(card), str(tmp_path / "sep")
    sep.n_threads = 1
    separate_detections_into_folders(sep)
    assert (tmp_path / "sep" / "animals" / "cam_a" / "IMG_0000.JPG").exists()
    assert (tmp_path / "sep" / "empty" / "cam_a" / "IMG_0004.JPG").exists()
    pp = PostProcessingOptions()
    pp.md_results_file, pp.output_dir, pp.image_base_dir = str(md), str(tmp_path / "preview"), str(card)
    pp.parallelize_rendering, pp.confidence_threshold = False, 0.2
    result = process_batch_results(pp)
    assert Path(result.output_html_file).exists() and (tmp_path / "preview" / "detections_animal.html").exists()


def test_camtrap_dp_with_events_counts_and_boxes_passes_the_official_profile(detected, tmp_path):
    dp = write(detected, tmp_path, "camtrapdp", "package", location=(-1.29, 36.82))
    assert camtrap_dp_errors(dp) == []
    with open(dp / "observations.csv", newline="") as f:
        obs = list(csv.DictReader(f))
    with open(dp / "media.csv", newline="") as f:
        media = {m["mediaID"]: m for m in csv.DictReader(f)}
    lion_media = [o for o in obs if o["observationLevel"] == "media" and o["scientificName"] == "Panthera leo"]
    assert lion_media and all(o["count"] == "1" and o["bboxX"] and o["eventID"] for o in lion_media)
    assert all(float(o["classificationProbability"]) > 0 for o in lion_media)
    events = [o for o in obs if o["observationLevel"] == "event"]
    burst = next(o for o in events if o["scientificName"] == "Panthera leo" and "photos:3" in o["observationTags"])
    assert burst["eventStart"] == "2024-03-05T06:41:00+00:00" and burst["eventEnd"] == "2024-03-05T06:41:02+00:00"
    photos = by_name(detected[3])
    most = max(photos[f"cam_a/IMG_000{k}.JPG"].count.get("lion", 0) for k in range(3))
    assert burst["count"] == str(most) and most >= 1 and burst["mediaID"] == ""  # the most lions in one photo
    assert {o["eventID"] for o in lion_media} & {burst["eventID"]}
    empty = next(o for o in obs if media.get(o["mediaID"], {}).get("fileName") == "IMG_0004.JPG")
    assert empty["observationType"] == "blank" and empty["classificationProbability"] == "" and empty["count"] == ""
    pkg = json.loads((dp / "datapackage.json").read_text())
    assert pkg["project"]["observationLevel"] == ["media", "event"]


def test_coco_camera_traps_and_addaxai_exports(detected, card, tmp_path):
    from megadetector.data_management.integrity_check_json_db import IntegrityCheckOptions, integrity_check_json_db

    coco = write(detected, tmp_path, "coco", "coco.json")
    options = IntegrityCheckOptions()
    options.baseDir, options.bCheckImageSizes, options.verbose, options.nThreads = str(card), True, False, 1
    _, data, errors = integrity_check_json_db(str(coco), options)
    assert errors["validation_errors"] == [] and len(data["images"]) == 7
    names = {c["id"]: c["name"] for c in data["categories"]}
    lion_anns = [a for a in data["annotations"] if names[a["category_id"]] == "lion" and "bbox" in a]
    assert lion_anns and all(a["bbox"][2] > 50 for a in lion_anns)  # pixels, not fractions
    csv_path = write(detected, tmp_path, "addaxai", "results_detections.csv")
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    lion = next(r for r in rows if r["relative_path"] == "cam_a/IMG_0000.JPG" and r["label"] == "lion")
    assert lion["Make"] == "Reconyx" and lion["Model"] == "HC600" and lion["DateTimeOriginal"] == "05/03/24 06:41:00"
    assert int(lion["file_width"]) == 1600 and 0 < int(lion["bbox_left"]) < int(lion["bbox_right"]) <= 1600
    with open(tmp_path / "results_detections_files.csv", newline="") as f:
        files = {r["relative_path"]: r for r in csv.DictReader(f)}
    assert files["cam_a/IMG_0004.JPG"]["label"] == "empty" and files["cam_a/IMG_0004.JPG"]["n_detections"] == "0"
    assert files["cam_b/broken.jpg"]["label"] == "error" and files["cam_b/broken.jpg"]["error"]


def test_classify_detect_from_the_command_line_writes_rows_with_detections(card, tmp_path):
    from test_formats import wildwatch

    out = tmp_path / "rows.jsonl"
    proc = wildwatch("classify", card / "cam_a", "--detect", "--output", out, code=0)
    assert "built-in detector at 416 px" in proc.stderr and "1 lion" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 5 and all("detections" in r and "count" in r for r in rows)
    bad = wildwatch("classify", card, "--detect", "--detector-size", "400", code=2)
    assert "multiple of 32" in bad.stderr and "Traceback" not in bad.stderr


def test_avif_photos_are_found_in_folder_scans(tmp_path):
    from wildwatch.data.discover import IMAGE_EXTENSIONS, expand_paths
    from wildwatch.inference.formats import media_type

    camera_photo(tmp_path / "a.jpg", "lion", "2024:03:05 06:41:00")
    Image.open(tmp_path / "a.jpg").save(tmp_path / "b.avif")
    assert ".avif" in IMAGE_EXTENSIONS and media_type("x.AVIF") == "image/avif"
    assert [p.name for p in expand_paths([tmp_path])] == ["a.jpg", "b.avif"]
    from wildwatch.inference.predictor import Predictor

    [a, b] = list(Predictor.from_file(None).predict_paths([tmp_path / "a.jpg", tmp_path / "b.avif"]))
    assert b.error is None and b.species == a.species


def test_crops_are_cut_with_the_detail_of_the_full_resolution_photo(tmp_path, monkeypatch):
    """A small box in a large JPEG is cut from a decode where it keeps twice the classifier's input
    side; the old path cut it from the draft decode at the classifier's size (a few pixels wide)."""
    from wildwatch.inference.crops import crop_scale, decode_for_crops
    from wildwatch.inference.megadetector import classify_detections
    from wildwatch.inference.predictor import Predictor
    from wildwatch.inference.readers import normalise

    camera_photo(tmp_path / "big.jpg", "lion", None, at=(1400, 1000), size=(120, 90))
    Image.open(tmp_path / "big.jpg").resize((4800, 3600)).save(tmp_path / "big.jpg", quality=90)
    small_box, large_box = [0.58, 0.55, 0.08, 0.08], [0.1, 0.1, 0.8, 0.8]
    assert crop_scale([small_box], 4800, 3600, 224) == 1 and crop_scale([large_box], 4800, 3600, 224) == 8
    assert decode_for_crops(tmp_path / "big.jpg", [large_box], 224).width == 600  # 1/8: the crop keeps 450 px
    predictor = Predictor.from_file(None)
    seen = []
    original = Predictor.predict_images  # a Predictor never changes: the spy goes on its class
    def spy(self, images, *a, **k):
        seen.extend(im.size for im in images)
        return original(self, images, *a, **k)

    monkeypatch.setattr(Predictor, "predict_images", spy)
    doc = normalise({"info": {"format_version": "1.4"}, "detection_categories": {"1": "animal"},
                     "images": [{"file": "big.jpg", "detections": [
                         {"category": "1", "conf": 0.9, "bbox": small_box}]}]}, Path("md.json"))
    classify_detections(doc, tmp_path, predictor)
    assert seen and min(seen[0]) >= 448  # 0.08 x 4800 px, grown by the margin: about 460 px


def test_crop_decodes_keep_full_detail_only_in_narrow_modes(tmp_path):
    """The loader reduces every decode to 4 Mpx (a wide mode is copied several times over while it
    is converted); a crop decode keeps a JPEG's full detail, never a wide mode's full size."""
    from wildwatch.data.loading import KEEP_PIXELS, load_photo
    from wildwatch.inference.crops import decode_for_crops

    Image.new("RGB", (3000, 2000), (90, 120, 60)).save(tmp_path / "rgb.jpg", quality=80)
    Image.new("RGBA", (3000, 2000), (90, 120, 60, 128)).save(tmp_path / "rgba.png", compress_level=1)
    small_box = [0.5, 0.5, 0.05, 0.05]
    assert load_photo(tmp_path / "rgb.jpg")[0].size == (1500, 1000)  # the usual decode: within 4 Mpx
    assert decode_for_crops(tmp_path / "rgb.jpg", [small_box], 224).size == (3000, 2000)
    wide = decode_for_crops(tmp_path / "rgba.png", [small_box], 224)
    assert wide.mode == "RGB" and wide.width * wide.height <= KEEP_PIXELS


def test_the_folder_of_a_card_keeps_each_camera_s_events_apart_and_a_long_burst_together(tmp_path):
    from datetime import datetime, timedelta

    from wildwatch.inference.sequences import PhotoAnswer, decide, group_events

    t0 = datetime(2024, 3, 5, 6, 0, 0)
    moments = [(t0 + timedelta(seconds=i), False) for i in range(200)] + [(t0 + timedelta(seconds=400), True)]
    events = group_events(["cam"] * 201, moments, gap_s=60)
    assert [len(e.members) for e in events] == [200, 1] and events[1].time_from_file
    answers = [PhotoAnswer("lion", True, 0.9, {"lion": 2})] * 150 + [PhotoAnswer("cheetahs", True, 0.8, {})] * 30
    answers += [PhotoAnswer("empty", False)] * 20 + [PhotoAnswer("unknown", False)]
    ev = decide(events[0], answers)
    assert ev.label == "lion" and ev.count == 2 and ev.disagrees == set(range(150, 180)) and not ev.unsure
    assert decide(events[1], answers).label == "unknown"
    unsure = group_events(["c", "c"], [(t0, False), (t0, False)])
    assert decide(unsure[0], [PhotoAnswer("rhino", True, 0.3), PhotoAnswer("person", False)]).unsure
    assert group_events(["a", "b"], [(t0, False), (t0, False)])[0].id != group_events(["b"], [(t0, False)])[0].id


# ---------------------------------------------------------------- the monitor and the server


def test_monitor_records_a_burst_as_one_sighting_at_its_exif_time_and_place(tmp_path):
    """Folder photos: the sighting's times are the EXIF capture times (not when they were
    processed), its position the EXIF GPS, and a burst of one camera is one sighting."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_field import _dms
    from test_monitor import BLUE, RED, colour_classifier, config

    from wildwatch.monitor.run import Monitor
    from wildwatch.store.events import EventStore

    folder = tmp_path / "card"
    folder.mkdir()

    def shot(name: str, colour, when: str | None, serial: str = "A1", gps=(-2.3333, 34.8333)):
        exif = Image.Exif()
        exif[MAKE], exif[MODEL] = "Reconyx", "HC600"
        exif.get_ifd(0x8769)[SERIAL] = serial
        if when:
            exif.get_ifd(0x8769)[0x9003] = when
            exif.get_ifd(0x8769)[0x9011] = "+03:00"
        g = exif.get_ifd(0x8825)
        g[1], g[2], g[3], g[4] = "S", _dms(gps[0]), "E", _dms(gps[1])
        Image.new("RGB", (64, 48), colour).save(folder / name, exif=exif)

    for k in range(3):  # a burst of lions, a second apart
        shot(f"IMG_000{k}.JPG", BLUE, f"2024:03:05 06:41:0{k}")
    shot("IMG_0003.JPG", BLUE, "2024:03:05 06:55:00")  # the same camera, 14 minutes later: another sighting
    shot("IMG_0004.JPG", BLUE, "2024:03:05 06:41:01", serial="B7")  # another camera, the same second
    shot("IMG_0005.JPG", RED, "2024:03:05 06:41:02")  # a rhino in the middle of the lions' burst
    store = EventStore(tmp_path / "events.db")
    stats = Monitor(config(tmp_path, once=True), colour_classifier, store=store, status=False).run([str(folder)])
    assert stats["errors"] == []
    rows = sorted(store.list(), key=lambda s: (s.species, s.wall_start))
    lions = [s for s in rows if s.species == "lion"]
    assert len(lions) == 3 and len([s for s in rows if s.species == "rhino"]) == 1
    burst = next(s for s in lions if s.source.endswith("IMG_0000.JPG"))
    assert burst.wall_start.startswith("2024-03-05T03:41:00") and burst.wall_end.startswith("2024-03-05T03:41:02")
    assert burst.latitude == pytest.approx(-2.3333, abs=1e-3) and burst.longitude == pytest.approx(34.8333, abs=1e-3)


def test_monitor_and_server_with_the_detector(tmp_path):
    from fastapi.testclient import TestClient

    from wildwatch.inference.detect import Detector
    from wildwatch.inference.predictor import Predictor
    from wildwatch.monitor.run import Monitor, MonitorConfig, frame_classifier
    from wildwatch.service.app import create_app
    from wildwatch.store.events import EventStore

    photo = camera_photo(tmp_path / "card" / "IMG_0001.JPG", "lion", "2024:03:05 06:41:00")
    predictor = Predictor.from_file(None)
    cfg = MonitorConfig(db=tmp_path / "events.db", sinks=[], once=True, detect=True, drain_s=0)
    store = EventStore(cfg.db)
    Monitor(cfg, frame_classifier(predictor, cfg), store=store, status=False).run([str(photo.parent)])
    [sighting] = store.list()
    assert sighting.species == "lion" and sighting.wall_start.startswith("2024-03-05T06:41:00")
    with TestClient(create_app(predictor, detector=Detector())) as client:
        r = client.post("/v1/classify", files=[("files", ("a.jpg", photo.read_bytes(), "image/jpeg")),
                                               ("files", ("b.jpg", b"not a photo", "image/jpeg"))])
    assert r.status_code == 200, r.text
    good, bad = r.json()["predictions"]
    assert good["species"] == "lion" and good["count"] == {"lion": good["count"]["lion"]} and good["detections"]
    assert good["detections"][0]["conf"] >= 0.3 and good["status_colour"]
    assert bad["error"] and "b.jpg" in bad["error"]


def test_the_server_s_detector_runs_on_the_decoder_threads_within_the_limits(tmp_path):
    """serve --detect goes through the bounded decoder pool (never the event loop, nor an unbounded
    executor), and a photo's limit counts its full size: its crops may be cut from the full decode."""
    import threading

    from fastapi.testclient import TestClient

    from wildwatch.inference.detect import Detector
    from wildwatch.inference.predictor import Predictor
    from wildwatch.service.app import create_app
    from wildwatch.service.guard import Limits

    threads = []

    class Recording(Detector):
        def detect(self, images):
            threads.append(threading.current_thread().name)
            return super().detect(images)

    photo = camera_photo(tmp_path / "IMG_0001.JPG", "lion", "2024:03:05 06:41:00").read_bytes()  # 1600 x 1200
    files = [("files", ("a.jpg", photo, "image/jpeg"))]
    predictor, small = Predictor.from_file(None), Limits(max_pixels=1_000_000)
    with TestClient(create_app(predictor, limits=small)) as client:
        assert client.post("/v1/classify", files=files).status_code == 200  # read at draft scale: within 1 Mpx
    with TestClient(create_app(predictor, limits=small, detector=Recording())) as client:
        refused = client.post("/v1/classify", files=files)
    assert refused.status_code == 413 and "1600x1200" in refused.json()["detail"] and not threads
    with TestClient(create_app(predictor, detector=Recording())) as client:
        r = client.post("/v1/classify?explain=true", files=files)
        health = client.get("/health").json()
    assert r.status_code == 200, r.text
    [answer] = r.json()["predictions"]
    assert answer["species"] == "lion" and answer["detections"] and answer.get("heatmap_png_base64") is None
    assert r.json()["notice"] and health["explain"] is False  # the page offers no heatmap it cannot draw
    assert threads and all(name.startswith("decode") for name in threads), threads


def test_detect_outputs_are_never_replaced_silently_and_survive_ctrl_c(card, tmp_path):
    """classify --detect and the camera-trap formats keep the output rules: an output with rows is
    refused without --overwrite (or --resume, for rows), a batch format is written whole at the
    end, a .json of rows resumes from its partial rows, a CSV resumes only with its own columns."""
    from wildwatch.errors import UsageError
    from wildwatch.inference.batch import ClassifyInterrupted, classify_files
    from wildwatch.inference.writers import partial_path
    from wildwatch.inference.writers.addaxai_tables import addaxai_files_path

    cam = card / "cam_a"  # five photos
    coco = tmp_path / "coco.json"
    classify_files(ClassifyOptions(paths=[cam], detect=True, format="coco", output=coco))
    before = coco.read_bytes()
    with pytest.raises(UsageError, match="--overwrite") as refused:
        classify_files(ClassifyOptions(paths=[cam], detect=True, format="coco", output=coco))
    assert "--resume" not in str(refused.value) and coco.read_bytes() == before

    def ctrl_c(p):
        raise KeyboardInterrupt

    with pytest.raises(ClassifyInterrupted) as stop:
        classify_files(ClassifyOptions(paths=[cam], detect=True, format="coco", output=coco, overwrite=True), ctrl_c)
    assert stop.value.rows == 0 and "run again" in stop.value.line() and coco.read_bytes() == before
    addax = tmp_path / "addax.csv"
    addaxai_files_path(addax).write_text("absolute_path\n/elsewhere/x.jpg\n")  # its per-photo table counts too
    with pytest.raises(UsageError, match="--overwrite"):
        classify_files(ClassifyOptions(paths=[cam], detect=True, format="addaxai", output=addax))
    classify_files(ClassifyOptions(paths=[cam], detect=True, format="addaxai", output=addax, overwrite=True))
    assert len(addaxai_files_path(addax).read_text().splitlines()) == 1 + 5 and addax.exists()
    doc, seen = tmp_path / "rows.json", []

    def ctrl_c_after_two(p):
        seen.append(p.source)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(ClassifyInterrupted) as stop:
        classify_files(ClassifyOptions(paths=[cam], detect=True, output=doc), ctrl_c_after_two)
    assert stop.value.rows == 2 and "--resume" in stop.value.line() and not doc.exists()
    summary = classify_files(ClassifyOptions(paths=[cam], detect=True, output=doc, resume=True))
    assert summary.already_done == 2 and summary.files == 3 and not partial_path(doc).exists()
    rows = json.loads(doc.read_text())
    assert len(rows) == 5 and all("detections" in r and "count" in r for r in rows)
    plain = tmp_path / "plain.csv"
    classify_files(ClassifyOptions(paths=[cam / "IMG_0000.JPG"], output=plain))
    before = plain.read_bytes()
    with pytest.raises(UsageError, match="without --detect"):
        classify_files(ClassifyOptions(paths=[cam], detect=True, output=plain, resume=True))
    assert plain.read_bytes() == before


def test_a_200_photo_burst_is_one_event_in_every_output(tmp_path):
    from wildwatch.inference.camtrap import sequences
    from wildwatch.inference.prediction import Prediction
    from wildwatch.inference.writers.coco_camera_traps import coco_camera_traps

    card = tmp_path / "burst"
    card.mkdir()
    preds = []
    for i in range(200):
        exif = Image.Exif()
        exif[MAKE], exif[MODEL] = "Reconyx", "HC600"
        exif.get_ifd(0x8769)[0x9003] = f"2024:03:05 06:{41 + i // 60:02d}:{i % 60:02d}"
        Image.new("RGB", (32, 24), (120, 110, 90)).save(card / f"IMG_{i:04d}.JPG", exif=exif)
        species = "lion" if i % 10 else "cheetahs"  # every tenth photo disagrees
        preds.append(Prediction(str(card / f"IMG_{i:04d}.JPG"), species, 0.9, top_k=({"species": species,
                                "probability": 0.9},), taken_at=f"2024-03-05T06:{41 + i // 60:02d}:{i % 60:02d}"))
    seqs = sequences(preds)
    [event] = seqs.events
    assert len(event.members) == 200 and event.label == "lion" and len(event.disagrees) == 20
    coco = coco_camera_traps(preds, card, seqs, "test")
    assert {im["seq_id"] for im in coco["images"]} == {event.id} and coco["images"][-1]["frame_num"] == 199


def test_a_burst_stays_one_sighting_across_a_restart_of_the_monitor(tmp_path):
    """The monitor stops after two photos of a burst (a restart, or the rest of the card copied in
    later); the third photo, a second later, grows the same sighting instead of opening another."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_monitor import BLUE, colour_classifier, config

    from wildwatch.monitor.run import Monitor
    from wildwatch.store.events import EventStore

    def shot(folder: Path, name: str, when: str):
        folder.mkdir(exist_ok=True)
        exif = Image.Exif()
        exif[MAKE], exif[MODEL] = "Reconyx", "HC600"
        exif.get_ifd(0x8769)[SERIAL] = "A1"
        exif.get_ifd(0x8769)[0x9003] = when
        Image.new("RGB", (64, 48), BLUE).save(folder / name, exif=exif)

    for k in range(2):
        shot(tmp_path / "card1", f"IMG_000{k}.JPG", f"2024:03:05 06:41:0{k}")
    store = EventStore(tmp_path / "events.db")
    Monitor(config(tmp_path, once=True), colour_classifier, store=store, status=False).run([str(tmp_path / "card1")])
    store.close()
    shot(tmp_path / "card1", "IMG_0002.JPG", "2024:03:05 06:41:02")  # the same camera, a second later
    shot(tmp_path / "card1", "IMG_0003.JPG", "2024:03:05 06:55:00")  # 14 minutes later: another sighting
    store = EventStore(tmp_path / "events.db")
    stats = Monitor(config(tmp_path, once=True), colour_classifier, store=store, status=False).run(
        [str(tmp_path / "card1")])
    assert stats["errors"] == []
    lions = sorted(store.list(), key=lambda s: s.wall_start)
    assert len(lions) == 2 and all(s.species == "lion" for s in lions)
    assert lions[0].wall_start.startswith("2024-03-05T06:41:00") and lions[0].wall_end.startswith("2024-03-05T06:41:02")
    assert lions[1].wall_start.startswith("2024-03-05T06:55:00")
