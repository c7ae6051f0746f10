"""``wildwatch export``: ONNX fp32 with a parity check, and static int8 calibrated on training photos."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from wildwatch.data.loading import load_image
from wildwatch.engine.checkpoint import resolve_model_path
from wildwatch.inference.backends import (
    MAX_INT8_LOSS_POINTS,
    OnnxRunner,
    TorchRunner,
    export_model_onnx,
    fp32_path,
    int8_path,
)


def _batch(predictor, root: Path, samples, n: int) -> np.ndarray:
    t = predictor.transform()
    return torch.stack([t(load_image(root / s.relpath)) for s in samples[:n]]).numpy()


def export(model: str | Path | None, out: Path | None = None, int8: bool = False, data: Path | None = None,
           calibration_size: int = 200) -> dict:
    """Export a model to ONNX (fp32, dynamic batch, one file) and check it against PyTorch.

    With ``int8``, also quantise it statically (QDQ, per-channel weights) on ``calibration_size``
    training photos of ``data`` and report its agreement and accuracy on the validation split.
    """
    from wildwatch.inference.predictor import Predictor, bundled_model_path

    model_file = resolve_model_path(bundled_model_path() if model is None else model)
    pred = Predictor.from_file(model_file, backend="torch")
    size = pred.preprocess.image_size
    fp32 = Path(out) if (out is not None and not int8) else fp32_path(model_file)
    t0 = time.perf_counter()
    if not fp32.exists() or (out is not None and not int8):
        export_model_onnx(pred.model, fp32, size)
    report: dict = {"model": str(model_file), "onnx": str(fp32), "export_seconds": round(time.perf_counter() - t0, 1)}

    from wildwatch.engine.evaluate import split_for_model

    split = split_for_model(model_file, pred.meta, data)[0] if data is not None else None
    if split is not None:
        check = _batch(pred, data, split.test, 32)
    else:
        check = np.random.default_rng(0).normal(0, 1, (8, 3, size, size)).astype(np.float32)
    ref, _ = TorchRunner(pred.model, torch.device("cpu"))(check)
    got, _ = OnnxRunner(fp32)(check)
    diff = float(np.abs(ref - got).max())
    report["fp32_max_abs_logit_diff"] = diff
    report["fp32_same_top1"] = bool((ref.argmax(1) == got.argmax(1)).all())
    if diff > 1e-4 or not report["fp32_same_top1"]:
        raise RuntimeError(f"{fp32}: ONNX output differs from PyTorch (max |Δlogit| {diff:.2e}); not using it")

    if int8:
        if data is None:
            raise ValueError("--int8 needs --data: static quantisation is calibrated on training photos")
        target = Path(out) if out is not None else int8_path(model_file)
        calib = _batch(pred, data, split.train[:: max(1, len(split.train) // calibration_size)], calibration_size)
        quantize_int8(fp32, target, calib)
        report["onnx_int8"] = str(target)
        val = split.val
        xs = [_batch(pred, data, val[i:i + 64], 64) for i in range(0, len(val), 64)]
        classes = pred.classes
        y = np.array([classes.index(s.label) for s in val])
        r32 = np.concatenate([OnnxRunner(fp32)(x)[0] for x in xs]).argmax(1)
        r8 = np.concatenate([OnnxRunner(target)(x)[0] for x in xs]).argmax(1)
        report["int8_top1_agreement_val"] = round(float((r32 == r8).mean()), 5)
        report["val_accuracy_fp32"] = round(float((r32 == y).mean()), 5)
        report["val_accuracy_int8"] = round(float((r8 == y).mean()), 5)
        report["int8_accuracy_change_points"] = round(100 * (report["val_accuracy_int8"] - report["val_accuracy_fp32"]), 3)
        report["used_by_auto_backend"] = report["int8_accuracy_change_points"] >= -MAX_INT8_LOSS_POINTS
        target.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


def quantize_int8(fp32: Path, target: Path, calibration: np.ndarray) -> None:
    """Static QDQ quantisation with per-channel weights (EfficientNet-Lite was designed for int8)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"input": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self):
            return next(self.batches, None)

    target.parent.mkdir(parents=True, exist_ok=True)
    pre = target.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(str(pre), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        pre.unlink(missing_ok=True)
