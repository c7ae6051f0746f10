"""The built-in animal detector: its decoding and suppression, and boxes on photos made here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import OOD_DATA, REAL_DATA
from PIL import Image

from wildwatch.inference.detect import Box, Detector, decode, detector_path, letterbox, nms


def anchors(size: int) -> int:
    return sum((size // s) ** 2 for s in (8, 16, 32))


def test_raw_outputs_decode_to_boxes_on_the_anchor_grids():
    size = 128
    raw = np.zeros((anchors(size), 6), np.float32)
    # the stride-16 grid starts after the 16 x 16 cells of stride 8; cell (x=3, y=2) of its 8 x 8
    i = 16 * 16 + 2 * 8 + 3
    raw[i] = [0.5, 0.5, np.log(2.0), 0.0, 0.9, 0.8]
    boxes, scores = decode(raw, size)
    assert np.allclose(boxes[i], [40, 32, 72, 48])  # centre (56, 40), 32 x 16
    assert scores[i] == pytest.approx(0.72) and scores.argmax() == i


def test_suppression_keeps_one_box_per_object_most_confident_first():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]], np.float32)
    scores = np.array([0.6, 0.9, 0.5, 0.3], np.float32)
    assert nms(boxes, scores, 0.45) == [1, 2]
    assert nms(boxes, scores, 0.45, limit=1) == [1]
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32)) == []


def test_letterbox_keeps_the_aspect_and_pads_right_and_bottom():
    img = Image.new("RGB", (800, 400), (10, 20, 30))
    arr, ratio = letterbox(img, 416)
    assert arr.shape == (3, 224, 416) and ratio == pytest.approx(0.52)  # 208 rows, padded to a multiple of 32
    assert tuple(arr[:, 100, 100]) == (10, 20, 30) and tuple(arr[:, 215, 100]) == (114, 114, 114)
    square, _ = letterbox(img, 416, square=True)
    assert square.shape == (3, 416, 416) and tuple(square[:, 300, 100]) == (114, 114, 114)


def test_a_rectangular_canvas_gives_the_boxes_of_the_square_one():
    scene = min((OOD_DATA / "landscape").glob("*.jpg"))
    lion = min((REAL_DATA / "lion").glob("*.jpg"))
    img = pasted(scene, lion, (880, 540), (480, 360))
    det = Detector()
    [rect] = det.detect([img])
    arr, ratio = letterbox(img, 416, square=True)
    square = det._boxes(det.raw(arr[None])[0], ratio, img.width, img.height)
    assert len(rect) == len(square) >= 1
    for a, b in zip(rect, square):  # the padding the network sees differs, not the photo: close, not equal
        assert abs(a.conf - b.conf) < 0.1 and max(abs(x - y) for x, y in zip(a.bbox, b.bbox)) < 0.02


def test_the_shipped_file_and_its_record():
    path = detector_path()
    assert path.exists() and path.stat().st_size < 12_000_000
    record = json.loads((path.parent / "animal_detector.json").read_text())
    assert record["source_sha256"] == "9683e004af3219635937d2a854b4443fe51527e242b2f3602267159a039571c6"
    assert "DrivenData" in (path.parent / "LICENSE-zamba.txt").read_text()
    for size in ("416", "640"):
        parity = record["box_parity_shipped"][size]
        assert parity["max_abs_conf_diff"] < 0.01 and parity["min_iou_of_matching_boxes"] > 0.95
        assert parity["photos_with_another_box_count"] <= 1
    import onnxruntime as ort

    meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert "DrivenData" in meta["wildwatch.licence"]


def pasted(scene: Path, animal: Path, at: tuple[int, int], size: tuple[int, int]) -> Image.Image:
    img = Image.open(scene).convert("RGB").resize((1600, 1200))
    img.paste(Image.open(animal).convert("RGB").resize(size), at)
    return img


def test_the_detector_finds_an_animal_pasted_into_a_landscape_and_nothing_in_the_empty_one():
    scene = min((OOD_DATA / "landscape").glob("*.jpg"))
    lion = min((REAL_DATA / "lion").glob("*.jpg"))
    det = Detector()
    [boxes] = det.detect([pasted(scene, lion, (880, 540), (480, 360))])
    assert boxes and all(isinstance(b, Box) for b in boxes)
    best = boxes[0]
    cx, cy = best.x + best.w / 2, best.y + best.h / 2
    assert 0.55 <= cx <= 0.85 and 0.45 <= cy <= 0.75 and best.conf >= 0.3  # inside the pasted photo
    assert det.detect([Image.open(scene).convert("RGB").resize((1600, 1200))]) == [[]]
    assert det.detect([Image.new("RGB", (640, 480), (128, 128, 128))]) == [[]]


def test_input_sizes_must_be_multiples_of_32():
    with pytest.raises(ValueError, match="multiple of 32"):
        Detector(size=400)
