"""The corruption library that CPU training, fine-tuning and the benchmark share: Pillow-exact
resampling, OpenCV-equal motion blur, the JPEG codec and its device emulation, and how little the
CPU training operations moved when they were rewritten on the library (their former code is kept
here as the reference)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import smooth_photo
from PIL import Image, ImageEnhance, ImageFilter

from wildwatch.robustness import augment as A
from wildwatch.robustness import corruptions as C
from wildwatch.robustness import ops as O
from wildwatch.robustness.ranges import BATCH, DEGRADE, Span

PIL_FILTERS = {"box": Image.BOX, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return smooth_photo(4, 120)[:, :100]  # 120 x 100: the two axes resample differently


@pytest.mark.parametrize("kind", sorted(PIL_FILTERS))
@pytest.mark.parametrize("size", [(48, 40), (37, 29), (120, 57), (200, 170), (7, 5)])
def test_resize_is_pillow_pixel_for_pixel(photo, kind, size):
    ours = O.to_uint8(O.resize(O.from_uint8(photo), size, kind, uint8_steps=True))
    theirs = np.asarray(Image.fromarray(photo).resize(size[::-1], PIL_FILTERS[kind]))
    np.testing.assert_array_equal(ours, theirs)
    # without the 8-bit steps (the device path), within a level of Pillow
    loose = O.to_uint8(O.resize(O.from_uint8(photo), size, kind)).astype(int)
    assert np.abs(loose - theirs).max() <= 1


def test_low_resolution_is_the_benchmarks_former_pillow_chain(photo):
    for px in (96, 48, 32):
        s = px / 120
        small = Image.fromarray(photo).resize((round(100 * s), round(120 * s)), Image.BOX)
        for up in ("bicubic", "nearest"):
            want = np.asarray(small.resize((100, 120), PIL_FILTERS[up]))
            np.testing.assert_array_equal(O.to_uint8(O.low_resolution(O.from_uint8(photo), px, up, True)), want)


def test_motion_blur_equals_opencv_within_a_level_on_a_few_pixels(photo):
    import cv2

    for length, angle in ((5, 10.0), (6, 80.0), (15, 135.0), (27, 33.0)):
        k = O.motion_kernel(length, angle)
        want = cv2.filter2D(photo, -1, k, borderType=cv2.BORDER_REFLECT).astype(int)
        ours = O.to_uint8(O.motion_blur(O.from_uint8(photo), torch.from_numpy(k)[None], "symmetric"))
        diff = np.abs(ours - want)  # sums that land on a half level round either way
        assert diff.max() <= 1 and (diff > 0).mean() < 0.05, (length, (diff > 0).mean())


def test_night_ir_is_the_benchmarks_former_formula_to_the_pixel():
    x = smooth_photo(5, 224)
    for sev in range(1, 6):
        rng = np.random.default_rng(sev)
        g = (x.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0
        g = g ** C.NIGHT_GAMMA[sev - 1] + rng.normal(0.0, C.NIGHT_NOISE[sev - 1], g.shape).astype(np.float32)
        former = (np.clip(g, 0, 1) * 255).round().astype(np.uint8)
        np.testing.assert_array_equal(C.night_ir(x, sev, np.random.default_rng(sev)), np.repeat(former[..., None], 3, 2))


def test_the_device_jpeg_stays_close_to_the_codec():
    x = smooth_photo(6, 128)
    for q in (5, 20, 40):
        codec = O.jpeg(x, q).astype(float)
        dct = O.to_uint8(O.jpeg_dct(O.from_uint8(x), torch.tensor([float(q)]))).astype(float)
        codec_error, dct_error = np.abs(codec - x).mean(), np.abs(dct - x).mean()
        assert np.abs(dct - codec).mean() < 2, q  # levels of 255
        assert abs(dct_error - codec_error) < 0.15 * codec_error, (q, dct_error, codec_error)


# The CPU training operations as they were written before the library (Pillow and numpy), with
# the same draws: what the rewrite changed is a rounding (noise, night: truncation became
# rounding), a true Gaussian for Pillow's box approximation (blur), and the mean of the three
# channels for Pillow's grey mean (dim).
def _former_blur(img, rng):
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3.0))))


def _former_noise(img, rng):
    a = np.asarray(img, np.float32)
    a = a + rng.normal(0, rng.uniform(0.02, 0.15) * 255, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _former_night(img, rng):
    g = np.asarray(img.convert("L"), np.float32) / 255.0
    g = g ** rng.uniform(1.2, 3.0) + rng.normal(0, rng.uniform(0.01, 0.1), g.shape)
    return Image.fromarray((np.clip(g, 0, 1) * 255).astype(np.uint8)).convert("RGB")


def _former_dim(img, rng):
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.2, 0.9)))
    return ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.4, 1.3)))


@pytest.mark.parametrize("name, former, mean_levels, max_levels",
                         [("blur", _former_blur, 1.0, 8), ("noise", _former_noise, 0.6, 1),
                          ("night", _former_night, 0.6, 2), ("dim", _former_dim, 1.6, 2)])
def test_cpu_training_operations_moved_by_under_a_level_or_two(name, former, mean_levels, max_levels):
    img = Image.fromarray(smooth_photo(7, 96))
    for seed in range(4):
        now = np.asarray(A.OPS[name](img, np.random.default_rng(seed))).astype(int)
        was = np.asarray(former(img, np.random.default_rng(seed))).astype(int)
        diff = np.abs(now - was)
        assert diff.mean() < mean_levels, (name, seed, diff.mean())  # levels of 255
        assert diff.max() <= max_levels, (name, seed, diff.max())


def test_the_two_training_paths_share_one_range_where_they_degrade_alike():
    assert DEGRADE.night_gamma is BATCH.night_gamma and DEGRADE.night_noise is BATCH.night_noise
    assert DEGRADE.jpeg_quality is BATCH.jpeg_quality and DEGRADE.occluder_aspect is BATCH.occluder_aspect
    span = Span(40, 5)
    assert span.low == 5 and span.high == 40
    assert torch.allclose(span.flat(torch.tensor([0.0, 1.0])), torch.tensor([40.0, 5.0]))
    draws = [span.draw_int(np.random.default_rng(i)) for i in range(200)]
    assert min(draws) == 5 and max(draws) == 40
