"""Fine-tuning the whole pretrained network (``wildwatch train --finetune``) on a tiny set, on CPU:
the run folder, a model the Predictor loads, resume after an interruption, and finishing from
best weights trained elsewhere."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_shapes_folder

from wildwatch.config import TrainConfig
from wildwatch.engine.fit import fit
from wildwatch.models.files import read_model_meta


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    return make_shapes_folder(tmp_path_factory.mktemp("ft_shapes"), per_class=10, size=64)


def _cfg(data, out, **kw) -> TrainConfig:
    base = {"data": data, "model": "effnet_lite0", "out": out, "finetune": True, "epochs": 2, "batch_size": 8, "image_size": 64,
                "workers": 0, "device": "cpu", "seed": 0}
    return TrainConfig(**{**base, **kw})


def test_finetune_trains_every_layer_and_writes_a_loadable_model(small_shapes, tmp_path):
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models import create_model

    res = fit(_cfg(small_shapes, tmp_path / "run", ood_dir=small_shapes / "red_circles"),
                                progress=False)
    out = res.out
    for name in ("config.yaml", "split.json", "history.csv", "history.json", "curves.png", "curves.html",
                 "model.safetensors", "best.safetensors", "state.pt", "train_metrics.json"):
        assert (out / name).exists(), name
    meta = read_model_meta(out / "model.safetensors")
    assert meta["recipe"]["finetune"] is True and meta["recipe"]["epochs_run"] == 2
    assert meta["metrics"]["test_accuracy"] is not None and "test_unknown_auroc" in meta["metrics"]
    assert meta["decision"]["fitted_on"] == "validation split" and meta["decision"]["unknown_threshold"] is not None
    # every layer but the frozen ImageNet head and classifier is stored, and training moved even the first layers
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
    assert "_conv_stem.weight" in keys and "_blocks.15._project_conv.weight" in keys
    assert not any(k.startswith(("_ood", "_imagenet_fc")) for k in keys)
    best = load_file(str(out / "best.safetensors"))  # fp32
    pretrained = create_model("effnet_lite0", 3, pretrained=True).state_dict()
    for k in ("_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_blocks.15._project_conv.weight"):
        assert not torch.equal(best[k], pretrained[k]), f"{k} was not trained"
    p = Predictor.from_file(out / "model.safetensors", backend="torch")
    img = min((small_shapes / "green_squares").glob("*.jpg"))
    pred = next(iter(p.predict_paths([img])))
    assert pred.error is None and (pred.named or pred.unknown or pred.uncertain) and 0 <= pred.confidence <= 1


def test_finetune_resumes_after_an_interruption(small_shapes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = {"n": 0}
    from wildwatch.reports import plots

    real_plot = plots.plot_curves

    def interrupting_plot(history, path):
        calls["n"] += 1
        real_plot(history, path)
        if calls["n"] == 1:
            raise KeyboardInterrupt  # stopped after the first epoch was saved

    monkeypatch.setattr(plots, "plot_curves", interrupting_plot)
    with pytest.raises(KeyboardInterrupt):
        fit(_cfg(small_shapes, out, epochs=3), progress=False)
    first = json.loads((out / "history.json").read_text())
    assert len(first) == 1
    with pytest.raises(FileExistsError):
        fit(_cfg(small_shapes, out, epochs=3), progress=False)
    res = fit(_cfg(small_shapes, out, epochs=3), resume=True, progress=False)
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == first[0]
    assert res.epochs_run == 3 and (out / "model.safetensors").exists()

    # trained elsewhere: only the best weights and the history came back; --resume finishes from them
    for name in ("state.pt", "model.safetensors", "model.json"):
        (out / name).unlink()
    res = fit(_cfg(small_shapes, out, epochs=3), resume=True, progress=False)
    assert json.loads((out / "history.json").read_text()) == history
    assert read_model_meta(out / "model.safetensors")["epoch"] == res.best_epoch
