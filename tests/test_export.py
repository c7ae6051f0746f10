"""ONNX export with its parity check, backends that agree, and the label audit's logic."""

import numpy as np
import pytest
import torch

from wildwatch.data.transforms import Preprocess
from wildwatch.engine.label_audit import confident_learning, out_of_fold_probs
from wildwatch.inference import Predictor
from wildwatch.inference.export import export
from wildwatch.models import create_model
from wildwatch.models.files import save_model


@pytest.fixture()
def small_model(tmp_path, monkeypatch):
    monkeypatch.setenv("WILDWATCH_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = create_model("seed_m4_gap", 3, image_size=32).eval()
    meta = {"architecture": "seed_m4_gap", "model_kwargs": {"image_size": 32}, "classes": ["a", "b", "c"],
            "preprocess": Preprocess(image_size=32).to_json(), "temperature": 1.0}
    return save_model(tmp_path / "m.safetensors", model, meta)


def test_export_checks_parity_and_backends_agree(small_model, shapes_dir):
    report = export(small_model)
    assert report["fp32_max_abs_logit_diff"] <= 1e-4 and report["fp32_same_top1"]
    files = sorted(shapes_dir.rglob("*.jpg"))[:20]
    a = list(Predictor.from_file(small_model, backend="torch").predict_paths(files))
    b = list(Predictor.from_file(small_model, backend="onnx").predict_paths(files))
    assert [p.species for p in a] == [p.species for p in b]
    assert np.allclose([p.confidence for p in a], [p.confidence for p in b], atol=1e-4)


def test_exported_files_say_what_their_outputs_mean(small_model):
    import json

    import onnxruntime as ort

    report = export(small_model)
    meta = ort.InferenceSession(report["onnx"], providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
    assert json.loads(meta["wildwatch.classes"]) == ["a", "b", "c"]
    assert json.loads(meta["wildwatch.preprocess"])["image_size"] == 32
    assert json.loads(meta["wildwatch.temperature"]) == 1.0 and "logits" in meta["wildwatch.outputs"]


def test_bundled_onnx_files_carry_their_metadata():
    import json

    import onnxruntime as ort

    from wildwatch.models.bundle import bundled

    pred = Predictor.from_file(None)
    for onnx in (bundled().int8, bundled().species):
        path = onnx.path
        meta = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        report = json.loads(onnx.report_path.read_text())
        assert json.loads(meta["wildwatch.classes"]) == pred.classes
        assert json.loads(meta["wildwatch.temperature"]) == pytest.approx(report["temperature"])
        assert json.loads(meta["wildwatch.preprocess"]) == report["preprocess"]


def test_int8_without_data_is_a_clear_error(small_model):
    with pytest.raises(ValueError, match="--data"):
        export(small_model, int8=True)
    with pytest.raises(FileNotFoundError, match="wildwatch export"):
        Predictor.from_file(small_model, backend="onnx-int8")


def test_confident_learning_flags_swapped_labels():
    rng = np.random.default_rng(0)
    n, k = 600, 3
    labels = rng.integers(0, k, n)
    feats = rng.normal(0, 1, (n, 16)) + np.eye(k, 16)[labels] * 4
    noisy = labels.copy()
    swapped = rng.choice(n, 20, replace=False)
    noisy[swapped] = (labels[swapped] + 1) % k
    probs = out_of_fold_probs(feats.astype(np.float32), noisy, list(range(n)), k, folds=4)
    flagged, suggested = confident_learning(probs, noisy)
    hits = set(np.nonzero(flagged)[0]) & set(swapped)
    assert len(hits) >= 15 and flagged.sum() <= 30
    assert all(suggested[i] == labels[i] for i in hits)


def test_int8_rule_needs_accuracy_and_unknown_detection():
    from wildwatch.inference.backends import int8_is_accurate

    assert int8_is_accurate({"int8_accuracy_change_points": -0.16})
    assert int8_is_accurate({"int8_accuracy_change_points": 0.1, "int8_unknown_auroc_change": -0.006})
    assert not int8_is_accurate({"int8_accuracy_change_points": -1.6})
    assert not int8_is_accurate({"int8_accuracy_change_points": 0.0, "int8_unknown_auroc_change": -0.03})
    assert not int8_is_accurate({})


def test_bundled_int8_ships_measured_and_auto_uses_it():
    import json

    from wildwatch.models.bundle import bundled

    model = bundled().weights
    path = bundled().int8.path
    assert path.parent == model.parent and path.stat().st_size < 12_000_000
    report = json.loads(bundled().int8.report_path.read_text())
    assert report["calibration_photos"] >= 200 and report["used_by_auto_backend"]
    assert report["int8_accuracy_change_points"] >= -0.3  # on validation and test photos together
    assert Predictor.from_file(None).backend == "onnx-int8"


def test_int8_and_torch_name_real_photos_alike():
    from conftest import REAL_DATA

    assert REAL_DATA.exists(), f"{REAL_DATA}: the real photos are needed here (CI always has ../shared/data)"
    files = [sorted((REAL_DATA / c).glob("*.jpg"))[-3] for c in sorted(p.name for p in REAL_DATA.iterdir() if p.is_dir())]
    a = list(Predictor.from_file(None, backend="torch").predict_paths(files))
    b = list(Predictor.from_file(None, backend="onnx-int8").predict_paths(files))
    same = sum(x.species == y.species for x, y in zip(a, b))
    assert same >= len(files) - 1, [(x.species, y.species) for x, y in zip(a, b)]
    assert max(abs(x.confidence - y.confidence) for x, y in zip(a, b) if x.species == y.species) < 0.15


def test_classify_on_onnx_never_imports_torch(tmp_path, shapes_dir):
    import subprocess
    import sys

    code = ("import sys\n"
            "from wildwatch.cli import app\n"
            "try:\n"
            f"    app(['classify', {str(shapes_dir)!r}, '--backend', 'onnx-int8', '--output', {str(tmp_path / 'o.csv')!r}, '-q'])\n"
            "except SystemExit as e:\n"
            "    assert not e.code, e.code\n"
            "print('torch' in sys.modules, 'torchvision' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]
    assert len((tmp_path / "o.csv").read_text().splitlines()) > 10


def test_classifying_keeps_numpy_on_one_blas_thread(shapes_dir):
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas_threads()
    pred = Predictor.from_file(None, backend="onnx-int8")
    files = sorted(shapes_dir.rglob("*.jpg"))[:3]
    it = pred.predict_paths(files)
    next(it)
    assert blas_threads() and all(n == 1 for n in blas_threads())
    assert len(list(it)) == 2
    assert blas_threads() == before  # given back afterwards


def test_symmetric_extras_are_stored_as_one_triangle(tmp_path):
    from safetensors import safe_open

    from wildwatch.models.files import load_extras

    model = create_model("seed_m4_gap", 3, image_size=32)
    a = torch.randn(6, 6)
    sym = (a + a.T).half()
    other = torch.randn(3, 6)
    save_model(tmp_path / "m.safetensors", model, {"architecture": "seed_m4_gap", "classes": ["a", "b", "c"]},
               extras={"ood_precision": sym, "ood_means": other})
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("extra.ood_precision.triu").shape == (21,)
    assert "extra.ood_precision" not in keys
    extras = load_extras(tmp_path / "m.safetensors")
    np.testing.assert_array_equal(extras["ood_precision"], sym.float().numpy())
    np.testing.assert_array_equal(extras["ood_means"], other.numpy())


def test_the_bundled_onnx_file_alone_reproduces_the_answer():
    """A third-party app that reads only the int8 ONNX file and its metadata (no wildwatch) gets
    wildwatch's species / uncertain / unknown answer: the rules are written out in the metadata."""
    import json
    from pathlib import Path

    import onnxruntime as ort
    from conftest import REAL_DATA
    from PIL import Image

    from wildwatch.models.bundle import bundled

    pred = Predictor.from_file(None, backend="onnx-int8")
    path = bundled().int8.path
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = {k.split(".", 1)[1]: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()
            if k.startswith("wildwatch.")}
    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.jpg"))
    photos = examples + [max((REAL_DATA / c).glob("*.jpg")) for c in pred.classes]
    images = [Image.open(p).convert("RGB") for p in photos] + [Image.new("RGB", (300, 200), (128, 128, 128))]
    pixels = pred.pixels(images)
    # (x / 255 - mean) / std, as one multiply and one subtract in float32 (the same rounding as wildwatch's)
    mean, std = np.array(meta["preprocess"]["mean"]), np.array(meta["preprocess"]["std"])
    scale, shift = (1 / (255 * std)).astype(np.float32), (mean / std).astype(np.float32)
    x = pixels.transpose(0, 3, 1, 2).astype(np.float32) * scale[:, None, None] - shift[:, None, None]
    logits, unknown, _ = sess.run(["logits", "unknown", "imagenet"], {"input": x})
    d = meta["decision"]
    z = logits.astype(np.float64) / meta["temperature"]
    p = np.exp(z - z.max(1, keepdims=True))
    p = np.sort(p / p.sum(1, keepdims=True), 1)[:, ::-1]
    p[:, 0] = np.clip(p[:, 0], 1e-9, 1 - 1e-9)
    w = np.array(d["calibration"])
    conf = 1 / (1 + np.exp(-(np.log(p[:, 0] / (1 - p[:, 0])) * w[0] + np.log(p[:, 0] / p[:, 1]) * w[1]
                             + unknown * w[2] + w[3])))
    theirs = ["unknown" if u > meta["unknown_threshold"] else "uncertain" if c < d["uncertain_below"]
              else meta["classes"][int(k)] for u, c, k in zip(unknown, conf, logits.argmax(1))]
    ours = [r.species for r in pred.predict_batch(pixels)]
    assert theirs == ours
    assert {"unknown", "rhino"} <= set(ours) and sum(s in pred.classes for s in ours) >= 8
