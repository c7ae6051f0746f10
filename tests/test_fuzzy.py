"""Fuzzy pooling layers against slow, obviously-correct references."""

import math

import pytest
import torch

from wildwatch.models import create_model
from wildwatch.models.fuzzy import FuzzyPool2d, FuzzyPool2dType1


def ref_type2(patch: list[float]) -> float:
    n = len(patch)
    s = sorted(patch)
    h = math.ceil(n / 2)
    kmm = [sum(s[k - 1:n - k + 1]) / (n - 2 * (k - 1)) for k in range(1, h + 1)]
    avg = sum(patch) / n
    sigma = sum(abs(x - avg) for x in patch) / n + 1e-4
    pi = [[math.exp(-0.5 * ((x - m) / sigma) ** 2) for m in kmm] for x in patch]
    tau = min(max(row) for row in pi)
    pbar = [sum(row) / len(row) for row in pi]
    keep = [(p, x) for p, x in zip(pbar, patch) if p >= tau] or list(zip(pbar, patch))
    return sum(p * x for p, x in keep) / sum(p for p, _ in keep)


def ref_type1(patch: list[float]) -> float:
    lo, hi = min(patch), max(patch)
    if hi == lo:
        return patch[0]

    def memberships(x):
        t = (x - lo) / (hi - lo)
        small = 1.0 if t <= 1 / 6 else (0.5 - t) * 3 if t < 0.5 else 0.0
        medium = 0.0 if abs(t - 0.5) >= 1 / 3 else 1 - abs(t - 0.5) * 3
        large = 0.0 if t <= 0.5 else (t - 0.5) * 3 if t < 5 / 6 else 1.0
        return small, medium, large

    mus = [memberships(x) for x in patch]
    totals = [sum(m[i] for m in mus) for i in range(3)]
    best = max(range(3), key=lambda i: (totals[i], -i))
    w = [m[best] for m in mus]
    return sum(wi * x for wi, x in zip(w, patch)) / sum(w)


def ref_pool(x: torch.Tensor, k: int, s: int, fn) -> torch.Tensor:
    n, c, h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    out = torch.zeros(n, c, ho, wo, dtype=x.dtype)
    for a in range(n):
        for b in range(c):
            for i in range(ho):
                for j in range(wo):
                    patch = x[a, b, i * s:i * s + k, j * s:j * s + k].reshape(-1).tolist()
                    out[a, b, i, j] = fn(patch)
    return out


CASES = [((2, 3, 6, 6), 2, 2), ((1, 2, 7, 5), 3, 2), ((1, 1, 9, 9), 3, 3), ((2, 2, 5, 8), 2, 1), ((1, 3, 8, 7), 4, 3)]


@pytest.mark.parametrize("shape,k,s", CASES)
@pytest.mark.parametrize("layer,ref", [(FuzzyPool2d, ref_type2), (FuzzyPool2dType1, ref_type1)])
def test_matches_reference_and_maxpool_shape(shape, k, s, layer, ref):
    torch.manual_seed(sum(shape) + k * 10 + s)
    x = torch.randn(*shape, dtype=torch.float64)
    got = layer(k, s)(x)
    assert got.shape == torch.nn.MaxPool2d(k, s)(x).shape
    torch.testing.assert_close(got, ref_pool(x, k, s, ref), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layer", [FuzzyPool2d, FuzzyPool2dType1])
def test_uniform_patch_returns_its_value(layer):
    x = torch.full((1, 2, 4, 4), 0.7)
    torch.testing.assert_close(layer(2)(x), torch.full((1, 2, 2, 2), 0.7))


@pytest.mark.parametrize("layer", [FuzzyPool2d, FuzzyPool2dType1])
def test_output_lies_within_the_patch_range(layer):
    x = torch.randn(2, 4, 8, 8)
    y = layer(2)(x)
    assert (y <= torch.nn.MaxPool2d(2)(x) + 1e-6).all() and (y >= -torch.nn.MaxPool2d(2)(-x) - 1e-6).all()


@pytest.mark.parametrize("layer", [FuzzyPool2d, FuzzyPool2dType1])
def test_gradcheck_float64(layer):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer(2, 1), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("pool", ["max", "avg", "fuzzy", "fuzzy1"])
def test_seed_models_take_every_pooling(pool):
    model = create_model("seed_m4_gap", 4, image_size=32, pool=pool)
    y = model(torch.randn(2, 3, 32, 32))
    y.sum().backward()
    assert y.shape == (2, 4)
    assert all(p.grad is not None for p in model.parameters())


PATHS = {"C++ loop": True, "tensor expressions": False}


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layer,rows", [(FuzzyPool2d, "fuzzy_type2_rows"), (FuzzyPool2dType1, "fuzzy_type1_rows")])
@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 4, 7, 5), (3, 2, 10, 13)])
def test_the_2x2_closed_form_is_the_unfold_path(layer, rows, shape, path):
    """The seed CNNs' 2x2/stride-2 windows take a closed form (one C++ loop, or tensor expressions on
    four strided views): the same function as the general path (which the references above check),
    ties and flat windows included."""
    import wildwatch.models.fuzzy as fz

    torch.manual_seed(shape[-1])
    pool = layer(2, 2, native=PATHS[path])
    for x in (torch.randn(*shape, dtype=torch.float64),
              torch.randint(0, 3, shape).to(torch.float64),  # many ties and flat windows
              torch.zeros(*shape, dtype=torch.float64)):
        patches, (n, c, ho, wo) = fz._patches(x, 2, 2)
        general = getattr(fz, rows)(patches).reshape(n, c, ho, wo)
        torch.testing.assert_close(pool(x), general, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(pool(x), ref_pool(x, 2, 2, ref_type2 if layer is FuzzyPool2d else ref_type1),
                                   rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("layer", [FuzzyPool2d, FuzzyPool2dType1])
def test_gradcheck_of_the_2x2_closed_form(layer, path):
    torch.manual_seed(1)
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer(2, 2, native=PATHS[path]), (x,), eps=1e-6, atol=1e-5)


def test_the_cpp_loop_is_built_and_used():
    """On a machine with a C++ compiler (CI's, a developer's) the 2x2 layers run the C++ loop."""
    from wildwatch.models import fuzzy_native

    assert fuzzy_native.available()
    x = torch.randn(1, 1, 4, 4, requires_grad=True)
    assert FuzzyPool2d(2)(x).grad_fn.name().endswith("_Pool2x2Backward")
    assert FuzzyPool2d(2, native=False)(x).grad_fn.name() != FuzzyPool2d(2)(x).grad_fn.name()


@pytest.mark.parametrize("layer", [FuzzyPool2d, FuzzyPool2dType1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_cpp_loop_has_the_gradient_of_the_tensor_expressions(layer, dtype):
    """Gradients of the C++ loop against autograd through the tensor expressions, on random values,
    on values with many ties (max, min and flat windows) and on odd sizes (a dropped row and column)."""
    torch.manual_seed(2)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for x in (torch.randn(2, 8, 12, 12, dtype=dtype), torch.randint(0, 3, (2, 3, 7, 9)).to(dtype),
              torch.randn(1, 3, 9, 5, dtype=dtype).relu()):
        grads = []
        for native in (True, False):
            xi = x.clone().requires_grad_(True)
            y = layer(2, 2, native=native)(xi)
            g = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
            grads.append((y.detach(), torch.autograd.grad(y, xi, g)[0]))
        torch.testing.assert_close(grads[0][0], grads[1][0], rtol=tol, atol=tol)
        torch.testing.assert_close(grads[0][1], grads[1][1], rtol=tol, atol=tol)


def test_without_the_kernel_the_layers_take_the_tensor_path(tmp_path):
    """WILDWATCH_FUZZY_NATIVE=0 (or a machine without a compiler) leaves the tensor expressions: same results."""
    import os
    import subprocess
    import sys

    torch.manual_seed(3)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.save(x, tmp_path / "x.pt")
    code = ("import sys, torch; from wildwatch.models import fuzzy_native;"
            "from wildwatch.models.fuzzy import FuzzyPool2d;"
            "x = torch.load(sys.argv[1], weights_only=True); y = FuzzyPool2d(2)(x.requires_grad_());"
            "assert not fuzzy_native.available(); assert 'Pool2x2' not in y.grad_fn.name();"
            "torch.save(y.detach(), sys.argv[2])")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")], check=True,
                   env={**os.environ, "WILDWATCH_FUZZY_NATIVE": "0"})
    torch.testing.assert_close(torch.load(tmp_path / "y.pt", weights_only=True), FuzzyPool2d(2)(x))
