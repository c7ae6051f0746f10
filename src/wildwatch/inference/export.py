"""``wildwatch export``: ONNX fp32 with a parity check, and static int8 calibrated on training photos."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from wildwatch.data.loading import load_image
from wildwatch.data.splits import Split
from wildwatch.errors import UsageError, WildwatchError
from wildwatch.inference.backends import OnnxRunner, TorchRunner, export_model_onnx, fp32_file, int8_is_accurate
from wildwatch.inference.onnx_export import onnx_metadata, stamp_metadata
from wildwatch.models.bundle import Bundle, OnnxFile, fresh_bundle, load_bundle, manifest_taken, write_manifest
from wildwatch.models.decision import Decision, Outputs, concat_outputs
from wildwatch.reports.metrics import auroc


def _batch(predictor, root: Path, samples, n: int) -> np.ndarray:
    return photo_batch(predictor.transform(), root, samples[:n])


def photo_batch(transform, root: Path, samples) -> np.ndarray:
    """Normalised NCHW arrays of the samples' photos."""
    return np.stack([transform.array(load_image(root / s.relpath)) for s in samples])


def calibration_samples(train: list, size: int = 500) -> list:
    """The training photos that calibrate the int8 ranges: every k-th, ``size`` of them."""
    return train[:: max(1, len(train) // size)][:size]


def _outputs(predictor, paths: dict[str, Path], root: Path, samples) -> dict[str, Outputs]:
    """Per ONNX file (by key): the network's outputs for the photos. Each batch is decoded once and run
    through every file."""
    runners = {k: OnnxRunner(f) for k, f in paths.items()}
    parts: dict[str, list[Outputs]] = {k: [] for k in paths}
    for i in range(0, len(samples), 64):
        batch = _batch(predictor, root, samples[i:i + 64], 64)
        for k, runner in runners.items():
            parts[k].append(runner(batch))
    return {k: concat_outputs(v) for k, v in parts.items()}


def _compare(fp32: Outputs, int8: Outputs, y: np.ndarray, name: str, decisions: dict[str, Decision]) -> dict:
    """Top-1 agreement, accuracy of each, the share of photos each calls unknown, and how often the whole
    answer (species, uncertain or unknown) is the same."""
    r32, r8 = fp32.logits.argmax(1), int8.logits.argmax(1)
    report = {
        f"int8_top1_agreement_{name}": round(float((r32 == r8).mean()), 5),
        f"{name}_accuracy_fp32": round(float((r32 == y).mean()), 5),
        f"{name}_accuracy_int8": round(float((r8 == y).mean()), 5),
    }
    report[f"int8_{name}_accuracy_change_points"] = round(
        100 * (report[f"{name}_accuracy_int8"] - report[f"{name}_accuracy_fp32"]), 3)
    v32, v8 = decisions["fp32"].decide(fp32), decisions["int8"].decide(int8)
    report[f"int8_same_answer_{name}"] = round(float(np.mean([(a.kind, a.top) == (b.kind, b.top)
                                                              for a, b in zip(v32, v8)])), 5)
    for key, v in (("fp32", v32), ("int8", v8)):
        report[f"{name}_rejected_as_unknown_{key}"] = round(float(np.mean([x.kind == "unknown" for x in v])), 5)
    return report


def _int8_threshold(decision: Decision, val: dict[str, Outputs]) -> float | None:
    """int8 moves the open-set score a little: its own threshold, rejecting as many validation photos as fp32."""
    fp32, int8 = val["fp32"].unknown, val["int8"].unknown
    if decision.unknown_threshold is None or fp32 is None or int8 is None:
        return None
    share = float(np.mean(fp32 > decision.unknown_threshold))
    return float(np.quantile(int8, 1 - share)) if share > 0 else decision.unknown_threshold


def export(model: str | Path | None, out: Path | None = None, int8: bool = False, data: Path | None = None,
           calibration_size: int = 500, ood_dir: Path | None = None) -> dict:
    """Export a model to ONNX (fp32, dynamic batch, one file) and check it against PyTorch.

    With ``int8``, also quantise it statically (QDQ, per-channel weights) on ``calibration_size``
    training photos of ``data`` and report its agreement, accuracy and unknown rejections on the
    validation split (which decides whether ``--backend auto`` may use it) and on the test split.
    With ``ood_dir`` (photos of none of the species), also the unknown detector's AUROC with each;
    then ``auto`` also needs int8 to stay within 0.01 of fp32's AUROC.

    The int8 file and its report go to ``out`` (the report beside it), else to the bundle's folder;
    a file written in the bundle's folder is named in its manifest (written for a model file that
    had none), so ``classify`` finds it.
    """
    from wildwatch.data.splits import split_for_model
    from wildwatch.inference.predictor import Predictor

    bundle = load_bundle(model)
    fp32 = Path(out) if (out is not None and not int8) else fp32_file(bundle)
    int8_files = _int8_files(bundle, out) if int8 else None
    _check_manifest(bundle, [fp32] if int8_files is None else [int8_files.path])
    pred = Predictor.from_file(bundle, backend="torch")
    photos = None if data is None else (data, split_for_model(bundle.model_file, pred.meta, data)[0])
    report = _export_fp32(pred, fp32, out is not None and not int8, photos)
    if int8_files is not None:
        if photos is None:
            raise UsageError("--int8 needs --data: static quantisation is calibrated on training photos")
        _export_int8(pred, fp32, int8_files, *photos, calibration_size, ood_dir, report)
        _record(bundle, int8=int8_files)
    elif out is not None:
        _record(bundle, fp32=fp32)
    return report


def _export_fp32(pred, fp32: Path, overwrite: bool, photos: tuple[Path, Split] | None) -> dict:
    """The fp32 ONNX file (exported unless there, or ``overwrite``), checked against PyTorch on the
    test photos (random inputs without ``photos``: the data folder and its split)."""
    size = pred.preprocess.image_size
    t0 = time.perf_counter()
    if not fp32.exists() or overwrite:
        export_model_onnx(pred.model, fp32, size)
    report: dict = {"model": str(pred.model_path), "onnx": str(fp32),
                    "export_seconds": round(time.perf_counter() - t0, 1)}
    if photos is not None:
        check = _batch(pred, photos[0], photos[1].test, 32)
    else:
        check = np.random.default_rng(0).normal(0, 1, (8, 3, size, size)).astype(np.float32)
    ref = TorchRunner(pred.model, torch.device("cpu"))(check)
    got = OnnxRunner(fp32)(check)
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got) if a is not None)
    report["fp32_max_abs_logit_diff"] = diff
    report["fp32_same_top1"] = bool((ref.logits.argmax(1) == got.logits.argmax(1)).all())
    if diff > 1e-4 or not report["fp32_same_top1"]:
        raise WildwatchError(f"{fp32}: ONNX output differs from PyTorch (max |Δ| {diff:.2e}); not using it")
    stamp_metadata(fp32, onnx_metadata(pred))
    return report


def _export_int8(pred, fp32: Path, files: OnnxFile, data: Path, split: Split, calibration_size: int,
                 ood_dir: Path | None, report: dict) -> None:
    """The int8 file calibrated on training photos, compared with fp32 (``report`` gets the figures),
    its report written and its metadata stamped with its own decision."""
    target = files.path
    calib = _batch(pred, data, calibration_samples(split.train, calibration_size), calibration_size)
    quantize_int8(fp32, target, calib)
    report["onnx_int8"] = str(target)
    report["calibration_photos"] = len(calib)
    paths = {"fp32": fp32, "int8": target}
    val = _outputs(pred, paths, data, split.val)
    test = _outputs(pred, paths, data, split.test)
    decisions = {"fp32": pred.decision, "int8": pred.decision}
    int8_threshold = _int8_threshold(pred.decision, val)
    if int8_threshold is not None:
        report["unknown_threshold"] = int8_threshold
        decisions["int8"] = dataclasses.replace(pred.decision, unknown_threshold=int8_threshold)
    for name, split_samples, outs in (("val", split.val, val), ("test", split.test, test)):
        y = np.array([pred.classes.index(s.label) for s in split_samples])
        report.update(_compare(outs["fp32"], outs["int8"], y, name, decisions))
    if ood_dir is not None and test["fp32"].unknown is not None:
        report.update(_unknown_report(pred, paths, Path(ood_dir), test, decisions))
    # the file's own decision rule reads these keys
    # on the validation and test photos together: a few hundred photos move the figure by a point either way
    n_val, n_test = len(split.val), len(split.test)
    report["int8_accuracy_change_points"] = round(
        (report["int8_val_accuracy_change_points"] * n_val + report["int8_test_accuracy_change_points"] * n_test)
        / max(n_val + n_test, 1), 3)
    if "unknown_auroc_int8" in report:
        report["int8_unknown_auroc_change"] = round(report["unknown_auroc_int8"] - report["unknown_auroc_fp32"], 5)
    report["used_by_auto_backend"] = int8_is_accurate(report)
    # beside the file, with file names only (the report travels with the model), and what a
    # user of the int8 file alone needs: its classes, preprocessing and temperature
    meta = pred.meta
    names = {"model": pred.model_path.name, "onnx": fp32.name, "onnx_int8": target.name, "classes": pred.classes,
             "preprocess": meta["preprocess"], "temperature": pred.temperature,
             "model_metrics": meta.get("metrics", {}), "model_recipe": meta.get("recipe", {}),
             "data_fingerprint": meta.get("data_fingerprint"), "split": meta.get("split")}
    assert files.report_path is not None  # _int8_files names one
    files.report_path.write_text(json.dumps({**report, **names}, indent=2))
    stamp_metadata(target, onnx_metadata(pred, decisions["int8"]))


def _unknown_report(pred, paths: dict[str, Path], ood_dir: Path, test: dict[str, Outputs],
                    decisions: dict[str, Decision]) -> dict:
    """The unknown detector with each file: its AUROC (test photos against ``ood_dir``'s) and the share
    of ``ood_dir``'s photos it catches."""
    from wildwatch.data.discover import Sample, ood_images

    report = {}
    others = [Sample(str(f.relative_to(ood_dir)), "unknown") for f in ood_images(ood_dir)]
    for key, o in _outputs(pred, paths, ood_dir, others).items():
        known, other = test[key].unknown, o.unknown
        assert known is not None and other is not None  # the caller checked the network has an open-set score
        report[f"unknown_auroc_{key}"] = round(auroc(known, other), 5)
        caught = [v.kind == "unknown" for v in decisions[key].decide(o)]
        report[f"unknown_caught_{key}"] = round(float(np.mean(caught)), 5)
    report["unknown_photos"] = len(others)
    return report


def _int8_files(bundle: Bundle, out: Path | None) -> OnnxFile:
    """Where the int8 copy and its report go: ``out`` (the report beside it), else the files the
    bundle already names for them, else beside its weights."""
    if out is not None:
        return OnnxFile(Path(out), Path(out).with_suffix(".json"))
    if bundle.int8 is not None and bundle.int8.report_path is not None:
        return bundle.int8
    w = bundle.model_file
    return OnnxFile(w.with_name(f"{w.stem}.int8.onnx"), w.with_name(f"{w.stem}.int8.json"))


def _in_folder(bundle: Bundle, path: Path) -> bool:
    return path.parent.resolve() == bundle.folder.resolve()


def _check_manifest(bundle: Bundle, outputs: list[Path]) -> None:
    """Before any work: an output in the bundle's folder is named in its manifest, which must be this model's."""
    if any(_in_folder(bundle, p) for p in outputs) and manifest_taken(bundle):
        raise UsageError(f"{bundle.folder}: its manifest describes another model; export {bundle.model_file} "
                         "into a folder of its own (--out)")


def _record(bundle: Bundle, **files) -> None:
    """Name the files written in the bundle's folder in its manifest."""
    keep = {k: v for k, v in files.items() if _in_folder(bundle, v.path if isinstance(v, OnnxFile) else v)}
    if keep:
        base = bundle if bundle.manifest is not None else fresh_bundle(bundle.model_file)
        write_manifest(dataclasses.replace(base, **keep))


# after the pooled features: the species and ImageNet classifiers and the open-set score, kept in float
HEAD_OPS = {"Gemm", "MatMul", "ReduceMean", "Where", "ReduceLogSumExp", "Sub", "GlobalAveragePool"}


def head_nodes(path: Path) -> list[str]:
    """The nodes of the network's heads (from the first pooling on): left in float by ``quantize_int8``."""
    import onnx

    nodes = onnx.load(str(path)).graph.node
    first = next((i for i, n in enumerate(nodes) if n.op_type in ("ReduceMean", "GlobalAveragePool")), len(nodes))
    return [n.name for n in nodes[first:] if n.op_type in HEAD_OPS]


def quantize_int8(fp32: Path, target: Path, calibration: np.ndarray) -> None:
    """Static QDQ quantisation: uint8 activations, per-channel int8 weights in 7 bits.

    On x86 CPUs without VNNI (AVX2 only), ONNX Runtime multiplies uint8 by int8 with an
    instruction whose 16-bit intermediate sums can saturate; full 8-bit weights lost 1.3-1.6
    points of validation accuracy on the bundled model, 7-bit weights (``reduce_range``) 0.16
    with 500 calibration photos, at the same speed. uint8 weights avoid the saturation too but
    run about 7x slower there."""
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
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True,
                        nodes_to_exclude=head_nodes(pre))
    finally:
        pre.unlink(missing_ok=True)
