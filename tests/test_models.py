import sys
from importlib.metadata import EntryPoint

import numpy as np
import pytest
import torch

import wildwatch.models
from wildwatch.models import create_model, get_entry, list_models, registry
from wildwatch.models.interface import SpeciesNetwork, is_backbone
from wildwatch.models.registry import DuplicateModelError, register_model


def small_model(name: str, num_classes: int = 5):
    """The model at a small input size, without downloading or loading pretrained weights."""
    entry = get_entry(name)
    size = 32 if "image_size" in entry.arguments() else 64
    return create_model(name, num_classes, **entry.accepted({"image_size": size, "pretrained": False})).eval(), size


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_at_two_sizes(name):
    base = get_entry(name).defaults.image_size
    for size in (base, base // 2 + 16):
        kwargs = get_entry(name).accepted({"image_size": size, "pretrained": False})
        model = create_model(name, num_classes=5, **kwargs).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list_models())
def test_every_model_keeps_the_contract(name, tmp_path):
    """What the rest of wildwatch asks of a network (models/interface.py): outputs, the open-set score and
    ImageNet logits where it has them, Grad-CAM's last convolution, and an ONNX export that gives the same answers."""
    import onnxruntime as ort

    from wildwatch.inference.backends import export_model_onnx
    from wildwatch.inference.explain import gradcam

    model, size = small_model(name)
    assert isinstance(model, SpeciesNetwork)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
        out, unknown, imagenet = model.predict_outputs(x)
        fmap, map_logits = model.last_conv_map(x)
    assert logits.shape == (2, 5) and torch.isfinite(logits).all()
    assert torch.allclose(out, logits, atol=1e-5) and torch.allclose(map_logits, logits, atol=1e-5)
    assert fmap.dim() == 4 and fmap.shape[0] == 2
    assert (unknown is None) == (imagenet is None)
    assert unknown is None or (unknown.shape == (2,) and imagenet.shape == (2, 1000))
    if is_backbone(model):
        with torch.no_grad():
            t = model.trunk(x)
            assert torch.allclose(model.classify_pooled(model.head_features(t)), logits, atol=1e-5)
            u, z = model.open_set_outputs(logits, model.ood_features(t))
            assert torch.allclose(u, unknown, atol=1e-5) and torch.allclose(z, imagenet, atol=1e-5)

    cam, idx = gradcam(model, x[0])
    assert cam.shape == (size, size) and np.isfinite(cam).all() and 0 <= cam.min() and cam.max() <= 1
    assert idx == int(logits[0].argmax())

    path = export_model_onnx(model, tmp_path / f"{name}.onnx", size)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})
    assert len(got) == (1 if unknown is None else 3)
    np.testing.assert_allclose(got[0], logits.numpy(), atol=1e-4)
    if unknown is not None:
        np.testing.assert_allclose(got[1], unknown.numpy(), atol=1e-4)
        np.testing.assert_allclose(got[2], imagenet.numpy(), atol=1e-3)


def test_seed_first_dense_layer_matches_the_seed_at_224():
    m4 = create_model("seed_m4", num_classes=11, image_size=224)
    first = next(mod for mod in m4.head if isinstance(mod, torch.nn.Linear))
    assert first.in_features == 256 * 14 * 14 == 50_176
    gap = create_model("seed_m4_gap", num_classes=11)
    n_m4 = sum(p.numel() for p in m4.parameters())
    n_gap = sum(p.numel() for p in gap.parameters())
    assert n_m4 > 25_000_000 and n_gap < 1_000_000


def test_list_models_pattern_and_unknown_name():
    assert list_models("seed_*") == ["seed_m0", "seed_m1", "seed_m2", "seed_m3", "seed_m4", "seed_m4_gap"]
    with pytest.raises(KeyError, match="unknown model"):
        create_model("nope", 3)


def test_seed_recipes_follow_the_seed():
    r = get_entry("seed_m4").defaults
    assert (r.lr, r.batch_size, r.epochs, r.step_size, r.gamma) == (1e-3, 8, 200, 10, 0.5)
    r3 = get_entry("seed_m3").defaults
    assert (r3.lr, r3.batch_size, r3.step_size) == (1e-4, 16, 20)


def test_model_arguments_pass_through_and_unknown_ones_are_refused():
    m = create_model("seed_m4_gap", 3, image_size=48, pool="avg")
    assert any(isinstance(mod, torch.nn.AvgPool2d) for mod in m.features)
    with pytest.raises(ValueError, match=r"'effnet_lite0' takes no argument 'image_size' \(its arguments: pretrained, absorbed\)"):
        create_model("effnet_lite0", 3, image_size=64)
    with pytest.raises(ValueError, match="takes no argument 'widht'"):
        create_model("seed_m0", 3, widht=2)


def test_a_name_registered_twice_is_an_error_naming_both(monkeypatch):
    list_models()  # the package's models are registered
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def seed_m4(num_classes: int):
        return torch.nn.Linear(1, num_classes)

    with pytest.raises(DuplicateModelError, match=r"'seed_m4' is registered twice: by wildwatch\.models\.seed\.seed_m4 "
                                                  r"and by test_models\..*seed_m4"):
        register_model()(seed_m4)
    assert get_entry("seed_m4").builder.__module__ == "wildwatch.models.seed"
    register_model(name="seed_m4_other")(seed_m4)  # under a name of its own it is fine
    assert "seed_m4_other" in list_models()


TOY = '''
import torch
import torch.nn as nn

from wildwatch.models.registry import TrainingDefaults, register_model


class Toy(nn.Module):
    def __init__(self, num_classes, width):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))

    def predict_outputs(self, x):
        return self(x), None, None

    def last_conv_map(self, x):
        fmap = self.features(x)
        return fmap, self.fc(fmap.mean((2, 3)))


@register_model(TrainingDefaults(lr=1e-2, batch_size=8, epochs=1, image_size=32))
def {name}(num_classes: int, image_size: int = 32, width: int = 4) -> Toy:
    """A toy network: one convolution of ``width`` channels."""
    return Toy(num_classes, width)
'''


@pytest.fixture
def fresh_registry(monkeypatch):
    """The registry as in a new process that has imported the package's models but not yet looked
    for more; restored afterwards."""
    list_models()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry._discovery, "done", False)
    return monkeypatch


def test_a_new_model_is_one_file_in_the_models_package(fresh_registry, tmp_path, shapes_dir):
    """Dropping a module into the package is all it takes: found, trained with its own arguments,
    and loaded back from the model file with them."""
    from wildwatch.config import TrainConfig
    from wildwatch.engine.fit import fit
    from wildwatch.models.files import load_model

    (tmp_path / "toy_net.py").write_text(TOY.replace("{name}", "toy_net"))
    fresh_registry.setattr(wildwatch.models, "__path__", [*wildwatch.models.__path__, str(tmp_path)])
    fresh_registry.delitem(sys.modules, "wildwatch.models.toy_net", raising=False)
    assert "wildwatch.models.toy_net" in registry.model_modules()
    assert "toy_net" in list_models() and "effnet_lite0" in list_models()
    assert get_entry("toy_net").arguments() == {"image_size": 32, "width": 4}

    cfg = TrainConfig(data=shapes_dir, model="toy_net", out=tmp_path / "run", model_args={"width": 6}, epochs=1,
                      workers=0)
    fit(cfg, progress=False)
    model, meta = load_model(tmp_path / "run" / "model.safetensors")
    assert meta["model_kwargs"] == {"image_size": 32, "width": 6}
    assert model.features[0].out_channels == 6
    sys.modules.pop("wildwatch.models.toy_net", None)


def test_unknown_model_arguments_are_refused_before_training(tmp_path):
    from wildwatch.config import TrainConfig

    with pytest.raises(ValueError, match="takes no argument 'depth'"):
        TrainConfig(data=tmp_path, model="seed_m4_gap", model_args={"depth": 3}).resolved()
    with pytest.raises(ValueError, match="own settings"):
        TrainConfig(data=tmp_path, model="seed_m4_gap", model_args={"pool": "avg"})


def test_installed_packages_add_models_through_entry_points(fresh_registry, tmp_path):
    import importlib.metadata

    (tmp_path / "plugin_zoo.py").write_text(TOY.replace("{name}", "plugin_net"))
    fresh_registry.syspath_prepend(str(tmp_path))
    fresh_registry.delitem(sys.modules, "plugin_zoo", raising=False)
    found = [EntryPoint(name="zoo", value="plugin_zoo", group=registry.ENTRY_POINT_GROUP)]
    real = importlib.metadata.entry_points
    fresh_registry.setattr(importlib.metadata, "entry_points",
                           lambda **kw: found if kw.get("group") == registry.ENTRY_POINT_GROUP else real(**kw))
    assert "plugin_net" in list_models() and "seed_m4" in list_models()
    assert create_model("plugin_net", 3, width=2).fc.in_features == 2
    sys.modules.pop("plugin_zoo", None)
