"""The built-in animal detector: box proposals for camera-trap photos, with ONNX Runtime and numpy.

The network is DrivenData's one-class YOLOX-tiny ("MegadetectorLite", MIT; see
resources/detector/LICENSE-zamba.txt), converted once to ONNX by tools/build_detector.py. It
finds animals, and also fires on people, vehicles and huts (it has one class): its boxes are
evidence and proposals for the classifier, never a reason to drop a photo.

The ONNX file holds the network without its box decoding; here a photo is letterboxed (scaled to
fit, padded at the right and bottom), run, and the raw outputs are decoded on the anchor grids
(strides 8, 16, 32) and suppressed with greedy non-maximum suppression.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

DETECTOR_FILE = "resources/detector/animal_detector.onnx"
DEFAULT_SIZE = 416  # the network's input side; 640 finds more small animals at 2.4x the cost
DEFAULT_THRESHOLD = 0.3  # detector confidence (objectness x class score) of a box that counts
NMS_IOU = 0.45  # boxes overlapping a more confident one by more than this are the same animal
CONTAINED = 0.85  # ... and so are boxes lying this much within a more confident one
PAD_VALUE = 114  # the grey YOLOX is trained to see around a letterboxed photo
STRIDES = (8, 16, 32)
MAX_BOXES = 100  # per photo, most confident first: a herd is counted, a broken file cannot flood the output


def detector_path() -> Path:
    return Path(str(resources.files("wildwatch").joinpath(DETECTOR_FILE)))


@dataclass(frozen=True)
class Box:
    """A detection: [x, y, width, height] in fractions of the photo (MegaDetector's convention)
    and the detector's confidence."""

    x: float
    y: float
    w: float
    h: float
    conf: float

    @property
    def bbox(self) -> list[float]:
        return [round(self.x, 4), round(self.y, 4), round(self.w, 4), round(self.h, 4)]


def letterbox(img: Image.Image, size: int, square: bool = False) -> tuple[np.ndarray, float]:
    """(CHW float32 array, the scale applied): the photo scaled so that its longer side is ``size``,
    RGB, 0-255, top-left on a PAD_VALUE canvas whose shorter side is the next multiple of 32 (or
    ``size`` with ``square``). A 4:3 photo at 416 is 416 x 320: a quarter less work than a square
    canvas, the same boxes (the network sees the same pixels at the same scale)."""
    ratio = min(size / img.width, size / img.height)
    w, h = max(1, round(img.width * ratio)), max(1, round(img.height * ratio))
    small = img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    ch, cw = (size, size) if square else (-(-h // 32) * 32, -(-w // 32) * 32)
    canvas = np.full((ch, cw, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:h, :w] = np.asarray(small)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def _grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y cell of each anchor, its stride), in the order the network lists its anchors."""
    cells, strides = [], []
    for s in STRIDES:
        ny, nx = height // s, width // s
        ys, xs = np.mgrid[0:ny, 0:nx]
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        strides.append(np.full(ny * nx, s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)[:, None]


def decode(raw: np.ndarray, height: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(boxes as x1, y1, x2, y2 in input pixels, scores) of one photo's raw outputs [anchors, 6] for an
    input of ``height`` x ``width`` (square when ``width`` is None)."""
    cells, strides = _grids(height, width or height)
    centre = (raw[:, :2] + cells) * strides
    half = np.exp(np.clip(raw[:, 2:4], -20, 20)) * strides / 2
    return np.concatenate([centre - half, centre + half], 1), raw[:, 4] * raw[:, 5]


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU, limit: int = MAX_BOXES,
        contained: float = CONTAINED) -> list[int]:
    """Greedy non-maximum suppression: indices kept, most confident first. A box that overlaps a
    kept one by more than ``iou``, or lies within it for more than ``contained`` of its own area
    (a part of the same animal: its head, its front half), is the same animal."""
    order = np.argsort(-scores, kind="stable")
    area = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0, np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]))
        h = np.maximum(0, np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]))
        inter = w * h
        same = (inter / np.maximum(area[i] + area[rest] - inter, 1e-9) > iou) | (
            inter / np.maximum(area[rest], 1e-9) > contained)
        order = rest[~same]
    return keep


class Detector:
    """Boxes for decoded photos. Thread-safe: each thread gets its own single-threaded session, so
    that photos decode and run on every core at once (as the classifier's ONNX runner does)."""

    def __init__(self, path: str | Path | None = None, size: int = DEFAULT_SIZE,
                 threshold: float = DEFAULT_THRESHOLD, nms_iou: float = NMS_IOU):
        if size % 32 or not 128 <= size <= 1280:
            raise ValueError(f"detector input size {size}: use a multiple of 32 between 128 and 1280")
        self.path = Path(path) if path is not None else detector_path()
        self.size, self.threshold, self.nms_iou = size, threshold, nms_iou
        self._local = threading.local()

    def _session(self):
        session = getattr(self._local, "session", None)
        if session is None:
            from wildwatch.inference.backends import ort_session

            session = self._local.session = ort_session(self.path, threads=1)
        return session

    def raw(self, batch: np.ndarray) -> np.ndarray:
        """The network's raw outputs [N, anchors, 6] for a letterboxed batch [N, 3, size, size]."""
        return self._session().run(None, {"images": batch})[0]

    def detect(self, images: Sequence[Image.Image]) -> list[list[Box]]:
        """The boxes of each photo at or above the threshold, most confident first."""
        out = []
        for im in images:  # one photo per run: each keeps its own canvas shape (no padding to a square)
            arr, ratio = letterbox(im, self.size)
            out.append(self._boxes(self.raw(arr[None])[0], ratio, im.width, im.height, arr.shape[1:]))
        return out

    def _boxes(self, raw: np.ndarray, ratio: float, width: int, height: int,
               canvas: tuple[int, int] | None = None) -> list[Box]:
        keep = raw[:, 4] * raw[:, 5] >= self.threshold
        boxes, scores = decode(raw, *(canvas or (self.size, self.size)))
        boxes, scores = boxes[keep], scores[keep]
        out = []
        for i in nms(boxes, scores, self.nms_iou, contained=CONTAINED):
            x1, y1, x2, y2 = (boxes[i] / ratio).tolist()
            x1, y1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
            x2, y2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
            if x2 - x1 >= 1 and y2 - y1 >= 1:
                out.append(Box(x1 / width, y1 / height, (x2 - x1) / width, (y2 - y1) / height, float(scores[i])))
        return out


