import json

import pytest
import torch
from conftest import csv_rows
from safetensors.torch import load_file

from wildwatch.config import TrainConfig
from wildwatch.engine.checkpoint import load_state
from wildwatch.engine.evaluate import evaluate_model
from wildwatch.engine.train import fit
from wildwatch.models.files import ModelFileError, load_model, read_model_meta


def _cfg(data, out, **kw):
    base = {"data": data, "out": out, "model": "seed_m4_gap", "image_size": 32, "batch_size": 16, "lr": 3e-3, "epochs": 6,
                "step_size": 4, "workers": 0, "device": "cpu", "ratios": (0.6, 0.2, 0.2)}
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def trained_run(shapes_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "r"
    result = fit(_cfg(shapes_dir, out), progress=False)
    return out, result


def test_training_learns_the_shapes(trained_run):
    out, result = trained_run
    assert result.best_val_acc >= 0.8  # chance is 1/3
    rows = csv_rows(out / "history.csv")
    assert len(rows) == 6 and float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert [float(r["lr"]) for r in rows][3:5] == [3e-3, 1.5e-3]  # StepLR halves after 4 epochs
    for f in ("config.yaml", "split.json", "curves.png", "curves.html", "model.safetensors", "model.json", "state.pt"):
        assert (out / f).exists(), f


def test_best_model_is_chosen_on_validation_and_records_metadata(trained_run):
    out, result = trained_run
    meta = read_model_meta(out)
    rows = csv_rows(out / "history.csv")
    best = max(range(len(rows)), key=lambda i: (float(rows[i]["val_acc"]), -i))
    assert meta["epoch"] == best + 1 == result.best_epoch
    assert meta["classes"] == ["blue_triangles", "green_squares", "red_circles"]
    assert meta["preprocess"]["image_size"] == 32 and len(meta["data_fingerprint"]) == 16
    model, _ = load_model(out)
    assert not model.training


def test_resume_ends_with_the_same_weights(shapes_dir, tmp_path):
    full = fit(_cfg(shapes_dir, tmp_path / "full", epochs=3), progress=False)
    fit(_cfg(shapes_dir, tmp_path / "cut", epochs=1), progress=False)
    resumed = fit(_cfg(shapes_dir, tmp_path / "cut", epochs=3), resume=True, progress=False)
    assert resumed.epochs_run == full.epochs_run == 3
    a = load_state(tmp_path / "full" / "state.pt")["model"]
    b = load_state(tmp_path / "cut" / "state.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_needs_a_state_and_a_fresh_run_needs_a_fresh_folder(shapes_dir, trained_run, tmp_path):
    out, _ = trained_run
    with pytest.raises(FileExistsError, match="--resume"):
        fit(_cfg(shapes_dir, out), progress=False)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(_cfg(shapes_dir, tmp_path / "none"), resume=True, progress=False)


def test_state_file_loads_without_unpickling_objects(trained_run):
    out, _ = trained_run
    st = torch.load(out / "state.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "history"} <= set(st)


def test_model_file_is_plain_safetensors(trained_run, tmp_path):
    out, _ = trained_run
    tensors = load_file(out / "model.safetensors")
    assert all(isinstance(v, torch.Tensor) for v in tensors.values())
    (tmp_path / "bad.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        read_model_meta(tmp_path / "bad.safetensors")


def test_evaluate_writes_reports_on_the_saved_test_split(trained_run, shapes_dir, tmp_path):
    out, _ = trained_run
    s = evaluate_model(out, shapes_dir, tmp_path / "eval", "test")
    split = json.loads((out / "split.json").read_text())
    assert s["n"] == len(split["test"]) and s["data_fingerprint_matches"]
    assert s["accuracy"] > 0.7
    assert set(s["per_class"]) == {"blue_triangles", "green_squares", "red_circles"}
    for f in ("metrics.json", "confusion_matrix.png", "confusion_matrix.csv", "misclassified.html",
              "reliability.png", "predictions.csv", "report.html"):
        assert (tmp_path / "eval" / f).exists(), f
    cm = csv_rows(tmp_path / "eval" / "confusion_matrix.csv", header=False)
    assert sum(int(x) for row in cm[1:] for x in row[1:]) == s["n"]
    assert {"full", "center_40pct", "center_20pct", "random_40pct", "squash_256"} == set(s["views"])


@pytest.mark.parametrize("model, finetune", [("seed_m4_gap", False), ("effnet_lite0", False), ("effnet_lite0", True)])
def test_resume_without_a_state_fails_the_same_for_every_recipe(shapes_dir, tmp_path, model, finetune):
    cfg = TrainConfig(data=shapes_dir, model=model, out=tmp_path / "none", finetune=finetune, epochs=1)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        fit(cfg, resume=True, progress=False)
    assert not (tmp_path / "none").exists()
