import pytest
import torch

from wildwatch.models import create_model, get_entry, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_model_runs_at_two_sizes(name):
    base = get_entry(name).recipe.image_size
    for size in (base, base // 2 + 16):
        kwargs = {"image_size": size, "pretrained": False}
        model = create_model(name, num_classes=5, **kwargs).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, size, size))
        assert out.shape == (2, 5) and torch.isfinite(out).all()


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
    r = get_entry("seed_m4").recipe
    assert (r.lr, r.batch_size, r.epochs, r.step_size, r.gamma) == (1e-3, 8, 200, 10, 0.5)
    r3 = get_entry("seed_m3").recipe
    assert (r3.lr, r3.batch_size, r3.step_size) == (1e-4, 16, 20)
