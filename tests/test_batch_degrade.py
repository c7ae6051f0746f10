"""Batch degradations used by fine-tuning: every operation changes an image, stays in range and
repeats with its seed; blurs blur more at higher severity; JPEG coding keeps flat blocks."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import draw_shape

from wildwatch.robustness.batch_degrade import OPS, BatchDegrade, jpeg
from wildwatch.robustness.ops import gaussian_kernels, line_kernels, per_image_conv


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    rng = random.Random(3)
    imgs = [np.asarray(draw_shape(label, rng, 128)) for label in ("red_circles", "green_squares", "blue_triangles")]
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def _high_freq(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per image."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) + (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))


@pytest.mark.parametrize("name", sorted(OPS))
def test_each_operation_changes_the_image_and_keeps_shape(batch, name):
    s = torch.ones(len(batch))
    out = OPS[name](batch.clone(), s, torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    assert torch.isfinite(out).all(), name
    assert float((out.clamp(0, 1) - batch).abs().mean()) > 0.003, f"{name} left the image almost unchanged"
    again = OPS[name](batch.clone(), s, torch.Generator().manual_seed(0))
    assert torch.equal(out, again), f"{name} is not repeatable with the same seed"


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "zoom_blur", "pixelate",
                                  "low_resolution"])
def test_blurs_remove_more_detail_at_higher_severity(batch, name):
    g = lambda: torch.Generator().manual_seed(1)
    light = OPS[name](batch, torch.full((3,), 0.1), g())
    heavy = OPS[name](batch, torch.full((3,), 1.0), g())
    assert (_high_freq(heavy) < _high_freq(light)).all()
    assert (_high_freq(light) < _high_freq(batch) + 1e-6).all()


def test_kernels_are_normalised_and_a_delta_kernel_is_the_identity(batch):
    k = gaussian_kernels(torch.tensor([0.5, 1.0, 3.0]))
    assert torch.allclose(k.sum((1, 2)), torch.ones(3))
    lines = line_kernels(torch.tensor([5.0, 9.0, 15.0]), torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 0.0, 0.2]))
    assert torch.allclose(lines.sum((1, 2)), torch.ones(3))
    delta = torch.zeros(3, 5, 5)
    delta[:, 2, 2] = 1
    assert torch.allclose(per_image_conv(batch, delta), batch, atol=1e-6)


def test_each_image_gets_its_own_kernel(batch):
    kernels = torch.zeros(3, 7, 7)
    kernels[:, 3, 3] = 1
    kernels[1] = gaussian_kernels(torch.tensor([1.0]))[0]  # 7x7
    out = per_image_conv(batch, kernels)
    assert torch.allclose(out[0], batch[0], atol=1e-6) and torch.allclose(out[2], batch[2], atol=1e-6)
    assert not torch.allclose(out[1], batch[1], atol=1e-3)


def test_jpeg_keeps_flat_blocks_and_loses_more_at_low_quality(batch):
    flat = torch.full((1, 3, 32, 32), 0.4)
    coded = jpeg(flat, torch.ones(1), None)
    assert float(coded.std()) < 1e-4  # a flat image has only a DC term: no blocks or ringing appear
    assert torch.allclose(jpeg(flat, torch.zeros(1), None), flat, atol=2 / 255)
    q40 = jpeg(batch, torch.zeros(3), None)
    q5 = jpeg(batch, torch.ones(3), None)
    err = lambda y: float((y.clamp(0, 1) - batch).abs().mean())
    assert 0 < err(q40) < err(q5)


def test_batch_degrade_mixes_clean_and_degraded_images_repeatably(batch):
    x = batch.repeat(8, 1, 1, 1)
    bd = BatchDegrade(p_clean=0.3, p_mix=0.3)
    a = bd(x, torch.Generator().manual_seed(5))
    b = bd(x, torch.Generator().manual_seed(5))
    c = bd(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1 + 1e-6
    unchanged = ((a - x).abs().amax((1, 2, 3)) == 0).sum()
    assert 0 < int(unchanged) < len(x)
    assert torch.equal(BatchDegrade(p_clean=1.0)(x, torch.Generator().manual_seed(5)), x)
