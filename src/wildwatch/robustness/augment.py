"""Training-time degradation: what CCTV and phone photos do to an image, applied at random.

``Degrade`` is a PIL-to-PIL transform that applies either one chain of 1-3 degradations, or an
AugMix-style mixture (Hendrycks et al., ICLR 2020): three chains blended with Dirichlet weights,
then blended with the original by a Beta-distributed weight. The operations (blur, sensor noise,
JPEG, low resolution, night/IR, motion blur, dim and flat light, occluding rectangles) are written
here and are not the benchmark's code; weather (snow, frost, fog), elastic, glass and zoom blur,
pixelation and pasted people or objects are never seen in training, so the benchmark also
measures how the hardening carries over to conditions it was not trained on.

Randomness comes from torch's generator (one draw per image), so cached training views are the
same each time they are computed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter


def _blur(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    return img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 3.0))))


def _noise(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    a = np.asarray(img, np.float32)
    a = a + rng.normal(0, rng.uniform(0.02, 0.15) * 255, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    from wildwatch.robustness.corruptions import jpeg

    return Image.fromarray(jpeg(np.asarray(img), int(rng.integers(5, 41))))


def _low_res(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    w, h = img.size
    s = float(rng.uniform(28, 100)) / max(w, h)
    small = img.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BOX)
    return small.resize((w, h), Image.BICUBIC if rng.random() < 0.7 else Image.NEAREST)


def _night(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    g = np.asarray(img.convert("L"), np.float32) / 255.0
    g = g ** rng.uniform(1.2, 3.0) + rng.normal(0, rng.uniform(0.01, 0.1), g.shape)
    g = (np.clip(g, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(g).convert("RGB")


def _motion(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    import cv2

    from wildwatch.robustness.corruptions import motion_kernel

    k = motion_kernel(int(rng.integers(5, 26)), float(rng.uniform(0, 180)))
    return Image.fromarray(cv2.filter2D(np.asarray(img), -1, k, borderType=cv2.BORDER_REFLECT))


def _dim(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.2, 0.9)))
    return ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.4, 1.3)))


def _occlude(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A rectangle over 10-40% of the frame: flat colour, noise, or a flipped piece of the image."""
    a = np.asarray(img).copy()
    h, w = a.shape[:2]
    frac = rng.uniform(0.1, 0.4)
    aspect = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    ph = int(min(h, round(math.sqrt(frac * h * w / aspect))))
    pw = int(min(w, round(frac * h * w / max(ph, 1))))
    top, left = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    kind = rng.integers(3)
    if kind == 0:
        a[top:top + ph, left:left + pw] = rng.integers(0, 256, 3)
    elif kind == 1:
        a[top:top + ph, left:left + pw] = rng.integers(0, 256, (ph, pw, 3))
    else:
        a[top:top + ph, left:left + pw] = np.flipud(np.fliplr(a))[top:top + ph, left:left + pw]
    return Image.fromarray(a)


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
