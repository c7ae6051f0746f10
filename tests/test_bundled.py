"""The bundled model, species status, calibration and the unknown answer."""

import json
import random

import numpy as np
import pytest
import torch
from conftest import REAL_DATA, draw_shape
from PIL import Image

from wildwatch.inference import Predictor, bundled_model_path
from wildwatch.models import create_model
from wildwatch.models.bundle import bundled as bundled_files
from wildwatch.models.decision import absorbed_mask, fit_temperature
from wildwatch.models.effnet import load_lite0_imagenet_state
from wildwatch.reports.metrics import nll, softmax
from wildwatch.species import THREATENED_CATEGORIES, species_info, species_table


@pytest.fixture(scope="module")
def bundled():
    return Predictor.from_file(None, backend="torch")


def test_backbone_forward_with_real_weights():
    classes = ["african_elephant", "lion"]
    model = create_model("effnet_lite0", num_classes=2, pretrained=True,
                         absorbed=np.where(absorbed_mask(classes))[0].tolist()).eval()
    state = load_lite0_imagenet_state()
    torch.testing.assert_close(model._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model._ood_conv_head.weight, state["_conv_head.weight"])
    torch.testing.assert_close(model._imagenet_fc.weight, state["_fc.weight"])
    img = torch.from_numpy(np.asarray(draw_shape("red_circles", random.Random(0), 224))).permute(2, 0, 1)
    x = (img.float() / 255 - 0.5) / 0.5
    with torch.no_grad():
        logits, unknown, imagenet = model.predict_outputs(x[None])
    assert logits.shape == (1, 2) and unknown.shape == (1,) and imagenet.shape == (1, 1000)
    assert torch.isfinite(unknown).all() and int(model._other.sum()) == 1000 - 3  # African elephant, tusker, lion


def test_bundled_model_is_small_and_self_describing(bundled):
    assert bundled_model_path().stat().st_size < 12_000_000
    meta = bundled.meta
    assert meta["architecture"] == "effnet_lite0" and len(meta["classes"]) == 11
    assert meta["stored_keys"] == "partial" and meta["temperature"] > 0
    d = meta["decision"]
    assert d["unknown_threshold"] is not None and d["calibration"] is not None and "field_dev" in d["fitted_on"]
    assert len(meta["model_kwargs"]["absorbed"]) == 10  # the ImageNet classes that are 9 of the 11 species
    assert len(meta["data_fingerprint"]) == 16 and meta["split"]["grouping"] == "near_duplicates.csv"
    assert meta["metrics"]["test_accuracy"] > 0.9
    # the readable copy the manifest names says what the model file itself says
    assert json.loads(bundled_files().metadata.read_text()) == meta


def test_bundled_model_classifies_with_status(bundled, tmp_path):
    img = draw_shape("green_squares", random.Random(3), 300)
    img.save(tmp_path / "x.jpg")
    [p] = list(bundled.predict_paths([tmp_path / "x.jpg"]))
    assert p.error is None and p.species and len(p.top_k) == 3
    assert p.top_k[0]["probability"] >= p.top_k[1]["probability"]
    d = p.to_json()
    for key in ("source", "species", "confidence", "top_k", "common_name", "iucn_status", "threatened", "unknown", "error"):
        assert key in d


def test_flat_grey_image_is_unknown(bundled):
    [p] = bundled.predict_images([Image.new("RGB", (320, 240), (128, 128, 128))], ["grey"])
    assert p.unknown and p.species == "unknown"
    assert p.to_json()["confidence"] is None and p.to_json()["top_k"] == []  # no species' probabilities shown
    assert p.iucn_status == "" and not p.threatened


def test_bundled_model_names_real_photos(bundled):
    assert REAL_DATA.exists(), f"{REAL_DATA}: the real photos are needed here (CI always has ../shared/data)"
    paths, truth = [], []
    for cls in bundled.classes:
        files = sorted((REAL_DATA / cls).glob("*.jpg"))[-4:]
        paths += files
        truth += [cls] * len(files)
    preds = list(bundled.predict_paths(paths))
    correct = sum(p.top_k[0]["species"] == t for p, t in zip(preds, truth))
    assert correct / len(paths) >= 0.85 and sum(p.species == t for p, t in zip(preds, truth)) / len(paths) >= 0.75
    lion = next(p for p, t in zip(preds, truth) if t == "lion" and p.species == "lion")
    assert lion.iucn_status == "VU" and lion.threatened and lion.common_name == "Lion"


def test_species_table_is_honest():
    table = species_table()
    assert len(table) == 11
    order = ["LC", "NT", "VU", "EN", "CR"]
    for key, info in table.items():
        cats = [a["category"] for a in info.assessments]
        assert cats and info.source.startswith("IUCN Red List")
        # threatened when any species the class may show is VU/EN/CR
        assert info.threatened == any(c in THREATENED_CATEGORIES for c in cats)
        lo, hi = min(cats, key=order.index), max(cats, key=order.index)
        assert info.iucn_status == (lo if lo == hi else f"{lo}–{hi}"), key
    # classes that mix species never claim a single Critically Endangered status
    assert species_info("rhino").iucn_status == "NT–CR"
    assert species_info("amur_leopard").iucn_status == "VU–CR"
    assert species_info("panthers").iucn_status == "NT–VU"
    assert species_info("orangutan").iucn_status == "CR"
    assert not species_info("arctic_fox").threatened and not species_info("jaguars").threatened


def test_temperature_scaling_lowers_nll_on_held_out_data():
    rng = np.random.default_rng(0)
    n, k = 4000, 5
    y = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), y] += 1.5
    logits *= 4  # an overconfident model
    t = fit_temperature(logits[:2000], y[:2000])
    assert t > 1.5
    assert nll(softmax(logits[2000:], t), y[2000:]) < nll(softmax(logits[2000:]), y[2000:]) - 0.1


def test_every_bundled_model_file_stays_within_12_mb():
    b = bundled_files()
    files = [b.weights, b.metadata, b.int8.path, b.int8.report_path, b.species.path, b.species.report_path]
    # the manifest names them all
    assert sorted(files) == sorted(p for p in b.folder.iterdir() if p.name != "info.json")
    assert any(p.suffix == ".onnx" for p in files)
    assert all(p.stat().st_size <= 12_000_000 for p in files) and sum(p.stat().st_size for p in files) <= 16_000_000


def test_robust_mode_names_species_with_the_fine_tuned_network_and_keeps_the_unknown_detector():
    from wildwatch.inference.backends import OnnxRunner

    main = Predictor.from_file(None, backend="onnx-int8")
    robust = Predictor.from_file(None, backend="onnx-int8", species_model="bundled")
    report = bundled_files().species.report()
    assert robust.backend == "onnx-int8+species" and robust.classes == report["classes"]
    assert robust.temperature == pytest.approx(report["temperature"]) and robust.temperature != main.temperature
    assert robust.unknown_threshold == main.unknown_threshold
    rng = random.Random(5)
    images = [draw_shape(c, rng, 256) for c in ("red_circles", "green_squares")]
    t = robust.transform()
    batch = t.normalise(np.stack([t.uint8(im) for im in images]))
    out, own = robust.forward(batch), main.forward(batch)
    np.testing.assert_allclose(out.logits, OnnxRunner(bundled_files().species.path)(batch).logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.unknown, own.unknown, rtol=1e-5, atol=1e-5)  # the main model's open-set score
    np.testing.assert_allclose(out.imagenet, own.imagenet, rtol=1e-5, atol=1e-5)
    # a flat grey frame is still unknown: the main model decides that
    [grey] = robust.predict_images([Image.new("RGB", (320, 240), (128, 128, 128))], ["grey"])
    assert grey.unknown and grey.species == "unknown"


def test_robust_mode_names_real_photos_and_holds_up_under_blur():
    from PIL import ImageFilter

    assert REAL_DATA.exists(), f"{REAL_DATA}: the real photos are needed here (CI always has ../shared/data)"
    robust = Predictor.from_file(None, species_model="bundled")
    main = Predictor.from_file(None)
    paths, truth = [], []
    for cls in robust.classes:
        files = sorted((REAL_DATA / cls).glob("*.jpg"))[-4:]
        paths += files
        truth += [cls] * len(files)
    clean = [Image.open(p).convert("RGB") for p in paths]
    blurred = [im.filter(ImageFilter.GaussianBlur(4)) for im in clean]
    right = lambda preds: sum(p.top_k[0]["species"] == t for p, t in zip(preds, truth))
    assert right(robust.predict_images(clean, [str(p) for p in paths])) / len(paths) >= 0.85
    assert right(robust.predict_images(blurred)) > right(main.predict_images(blurred))


def test_a_species_model_with_other_classes_is_refused(tmp_path):
    import shutil

    from wildwatch.models.files import ModelFileError

    src = bundled_files().species
    shutil.copy(src.path, tmp_path / "s.onnx")
    report = src.report()
    (tmp_path / "s.json").write_text(json.dumps({**report, "classes": list(reversed(report["classes"]))}))
    manifest = {"format": "wildwatch-bundle/1", "species": {"file": "s.onnx", "report": "s.json"}}
    (tmp_path / "info.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelFileError, match="classes"):
        Predictor.from_file(None, species_model=tmp_path)
    (tmp_path / "info.json").write_text(json.dumps({**manifest, "species": {"file": "s.onnx"}}))
    with pytest.raises(ModelFileError, match="export report"):
        Predictor.from_file(None, species_model=tmp_path / "info.json")


def test_a_manifest_names_files_of_its_own_folder_only(tmp_path):
    import shutil

    from wildwatch.models.bundle import load_bundle
    from wildwatch.models.files import ModelFileError

    shutil.copy(bundled_model_path(), tmp_path / "w.safetensors")
    ok = {"format": "wildwatch-bundle/1", "weights": "w.safetensors"}
    for bad, words in [({**ok, "weights": "../w.safetensors"}, "plain file name"),
                       ({**ok, "weights": "/etc/passwd"}, "plain file name"),
                       ({**ok, "int8": {"file": "sub/x.onnx"}}, "plain file name"),
                       ({**ok, "script": "x.py"}, "Extra inputs"),
                       ({**ok, "weights": "missing.safetensors"}, "not in"),
                       ({**ok, "format": "wildwatch-bundle/9"}, "format")]:
        (tmp_path / "info.json").write_text(json.dumps(bad))
        with pytest.raises(ModelFileError, match=words) as e:
            load_bundle(tmp_path)
        assert "info.json" in str(e.value)
    (tmp_path / "info.json").write_text(json.dumps(ok) + " " * 70_000)
    with pytest.raises(ModelFileError, match="larger than"):
        load_bundle(tmp_path / "info.json")
    (tmp_path / "info.json").write_text(json.dumps(ok))
    assert load_bundle(tmp_path).weights == tmp_path / "w.safetensors"
    assert load_bundle(tmp_path / "w.safetensors").manifest == tmp_path / "info.json"
    # a model file beside a manifest of other weights, or with none, is its weights alone
    shutil.copy(bundled_model_path(), tmp_path / "other.safetensors")
    alone = load_bundle(tmp_path / "other.safetensors")
    assert alone.manifest is None and alone.int8 is None and alone.weights == tmp_path / "other.safetensors"
    (tmp_path / "info.json").unlink()
    assert load_bundle(tmp_path / "w.safetensors").manifest is None


def test_a_model_file_alone_runs_its_fp32_copy_from_the_cache(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("WILDWATCH_CACHE", str(tmp_path / "cache"))
    shutil.copy(bundled_model_path(), tmp_path / "w.safetensors")
    pred = Predictor.from_file(tmp_path / "w.safetensors")  # no manifest: no int8 copy, auto exports fp32
    assert pred.backend == "onnx" and next(p.name for p in (tmp_path / "cache").iterdir()).endswith("_fp32.onnx")
    with pytest.raises(FileNotFoundError, match="wildwatch export"):
        Predictor.from_file(tmp_path / "w.safetensors", backend="onnx-int8")
