"""Training-time degradation: what CCTV and phone photos do to an image, applied at random.

``Degrade`` is a PIL-to-PIL transform that applies either one chain of 1-3 degradations, or an
AugMix-style mixture (Hendrycks et al., ICLR 2020): three chains blended with Dirichlet weights,
then blended with the original by a Beta-distributed weight. The operations (blur, sensor noise,
JPEG, low resolution, night/IR, motion blur, dim and flat light, occluding rectangles) come from
the corruption library (``ops``) with the ranges of ``ranges.DEGRADE``; weather (snow, frost,
fog), elastic, glass and zoom blur, pixelation and pasted people or objects are never seen in
training, so the benchmark also measures how the hardening carries over to conditions it was not
trained on.

Randomness comes from torch's generator (one draw per image), so cached training views are the
same each time they are computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from wildwatch.robustness import ops as O
from wildwatch.robustness.ranges import DEGRADE as R


def _on_photo(img: Image.Image, fn: Callable[[torch.Tensor], torch.Tensor]) -> Image.Image:
    """Run a library operation on a PIL photo."""
    return Image.fromarray(O.to_uint8(fn(O.from_uint8(np.asarray(img)))))


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    sigma = torch.tensor([R.blur_sigma.draw(rng)])
    return _on_photo(img, lambda x: O.gaussian_blur(x, sigma))


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    sigma = R.noise_sigma.draw(rng)
    w, h = img.size
    noise = torch.from_numpy(rng.normal(0, sigma, (h, w, 3)).astype(np.float32)).permute(2, 0, 1)
    return _on_photo(img, lambda x: O.gaussian_noise(x, noise))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(O.jpeg(np.asarray(img), R.jpeg_quality.draw_int(rng)))


def _low_res(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    px = R.low_res_px.draw(rng)
    up = "bicubic" if rng.random() < R.low_res_bicubic else "nearest"
    return _on_photo(img, lambda x: O.low_resolution(x, px, up, uint8_steps=True))


def _night(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    gamma = R.night_gamma.draw(rng)
    w, h = img.size
    noise = torch.from_numpy(rng.normal(0, R.night_noise.draw(rng), (h, w)).astype(np.float32))
    return _on_photo(img, lambda x: O.night_ir(x, gamma, noise, uint8_steps=True))


def _motion(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    length = R.motion_px.draw_int(rng)
    k = torch.from_numpy(O.motion_kernel(length, R.motion_angle_deg.draw(rng)))[None]
    return _on_photo(img, lambda x: O.motion_blur(x, k, border="symmetric"))


def _dim(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    c = R.dim_contrast.draw(rng)
    light = R.dim_brightness.draw(rng)
    return _on_photo(img, lambda x: O.dim(x, c, light))


def _occlude(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A rectangle over 10-40% of the frame: flat colour, noise, or a flipped piece of the image."""
    w, h = img.size
    frac = R.occluded.draw(rng)
    aspect = math.exp(rng.uniform(math.log(R.occluder_aspect.low), math.log(R.occluder_aspect.high)))
    ph, pw = O.occluder_size(frac, aspect, h, w)
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    kind = int(rng.integers(3))
    colour = torch.from_numpy(rng.integers(0, 256, 3)).float() / 255 if kind == 0 else None
    noise = torch.from_numpy(rng.integers(0, 256, (ph, pw, 3))).permute(2, 0, 1).float() / 255 if kind == 1 else None
    return _on_photo(img, lambda x: O.occlude(x[0], (top, left, ph, pw), kind, colour, noise)[None])


OPS = {"blur": _blur, "noise": _noise, "jpeg": _jpeg, "low_res": _low_res, "night": _night,
       "motion": _motion, "dim": _dim, "occlude": _occlude}


class Degrade:
    """Random degradation of a PIL image (see the module docstring). ``p_clean``: chance of no change."""

    def __init__(self, p_clean: float = 0.1, p_mix: float = 0.5, width: int = 3, max_depth: int = 3):
        self.p_clean, self.p_mix, self.width, self.max_depth = p_clean, p_mix, width, max_depth
        self.names = sorted(OPS)

    def chain(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        for _ in range(int(rng.integers(1, self.max_depth + 1))):
            img = OPS[self.names[int(rng.integers(len(self.names)))]](img, rng)
        return img

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        img = img.convert("RGB")
        u = rng.random()
        if u < self.p_clean:
            return img
        if u < self.p_clean + (1 - self.p_clean) * (1 - self.p_mix):
            return self.chain(img, rng)
        weights = rng.dirichlet([1.0] * self.width)
        mix = sum(wt * np.asarray(self.chain(img, rng), np.float32) for wt in weights)
        m = rng.beta(1.0, 1.0)
        out = m * np.asarray(img, np.float32) + (1 - m) * mix
        return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8))


def degraded_train_transform(pre):
    """The training transform with ``Degrade`` after the crop and before normalising."""
    from torchvision import transforms as T

    from wildwatch.data.transforms import interpolation_mode

    return T.Compose([
        T.RandomResizedCrop(pre.image_size, scale=(0.25, 1.0), interpolation=interpolation_mode(pre.interpolation),
                            antialias=True),
        T.RandomHorizontalFlip(),
        T.ColorJitter(0.3, 0.3, 0.3, 0.03),
        Degrade(),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])
