"""The conditions of the robustness benchmark, each a function of (image, severity, rng).

Every function takes a 224x224-style RGB ``uint8`` array (the model's eval crop), a severity in
1..5 (1..2 for ``small_in_frame``) and a seeded ``numpy.random.Generator``, and returns a
``uint8`` array of the same shape. The same seed gives the same image.

- **ImageNet-C** (Hendrycks & Dietterich, ICLR 2019): the 15 standard corruptions from the
  ``corrupt-tta`` package, a maintained re-implementation of the original code that runs with
  numpy 2 and current scikit-image (``imagecorruptions`` 1.1.2 needs ``pkg_resources`` and fails on
  glass blur, Gaussian blur and fog there; albumentations lacks frost and the ImageNet-C severity
  tables). ``corrupt-tta`` draws from numpy's global generator and, for impulse noise, from
  scikit-image's; both are seeded from ``rng`` around each call, so results are repeatable.
- **CCTV**: low resolution (96/64/48/40/32 px, upsampled back), night/infra-red (grey, gamma
  darkening, sensor noise), heavy JPEG (quality 20..5), motion blur along a random direction; the
  operations are the corruption library's (``ops``), the ones training uses, at the severities
  below.
- **Context**: a person or another object pasted over part of the animal (10..50% of the frame),
  and the animal small in a larger scene (1/4 and 1/16 of the frame area).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wildwatch.errors import UnknownNameError, UsageError, require
from wildwatch.robustness import ops as O

IMAGENET_C = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog", "brightness",
    "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
CCTV = ("low_resolution", "night_ir", "heavy_jpeg", "motion_blur_any")
CONTEXT = ("occlusion_person", "occlusion_object", "small_in_frame")

LOW_RES_PX = (96, 64, 48, 40, 32)
NIGHT_GAMMA = (1.4, 1.8, 2.2, 2.6, 3.0)
NIGHT_NOISE = (0.02, 0.04, 0.06, 0.08, 0.10)
HEAVY_JPEG_QUALITY = (20, 15, 10, 7, 5)
MOTION_LENGTH = (7, 11, 15, 21, 27)
OCCLUDED_FRACTION = (0.1, 0.2, 0.3, 0.4, 0.5)
SMALL_AREA = (1 / 4, 1 / 16)

_global_rng_lock = threading.Lock()


@dataclass(frozen=True)
class Condition:
    name: str
    family: str  # "imagenet_c", "cctv" or "context"
    severities: tuple[int, ...]

    def parameter(self, severity: int) -> str:
        """A human reading of the severity (e.g. "48 px", "quality 10")."""
        i = severity - 1
        return {
            "low_resolution": lambda: f"{LOW_RES_PX[i]} px",
            "night_ir": lambda: f"gamma {NIGHT_GAMMA[i]}, noise {NIGHT_NOISE[i]}",
            "heavy_jpeg": lambda: f"quality {HEAVY_JPEG_QUALITY[i]}",
            "motion_blur_any": lambda: f"{MOTION_LENGTH[i]} px, random direction",
            "occlusion_person": lambda: f"{OCCLUDED_FRACTION[i]:.0%} of the frame",
            "occlusion_object": lambda: f"{OCCLUDED_FRACTION[i]:.0%} of the frame",
            "small_in_frame": lambda: f"animal at 1/{round(1 / SMALL_AREA[i])} of the frame",
        }.get(self.name, lambda: f"severity {severity}")()


CONDITIONS: dict[str, Condition] = {
    **{n: Condition(n, "imagenet_c", (1, 2, 3, 4, 5)) for n in IMAGENET_C},
    **{n: Condition(n, "cctv", (1, 2, 3, 4, 5)) for n in CCTV},
    "occlusion_person": Condition("occlusion_person", "context", (1, 2, 3, 4, 5)),
    "occlusion_object": Condition("occlusion_object", "context", (1, 2, 3, 4, 5)),
    "small_in_frame": Condition("small_in_frame", "context", (1, 2)),
}


@dataclass
class Pastes:
    """Images for the context conditions: people, other objects, and empty scenery."""

    people: list[Path]
    objects: list[Path]
    scenery: list[Path]

    @classmethod
    def from_folder(cls, root: Path) -> Pastes:
        """``root/person``, ``root/landscape`` and every other sub-folder as objects
        (the layout of ``ood_dev``)."""
        from wildwatch.data.discover import expand_paths

        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: paste folder not found")
        people = list(expand_paths([root / "person"])) if (root / "person").is_dir() else []
        scenery = list(expand_paths([root / "landscape"])) if (root / "landscape").is_dir() else []
        objects = [p for d in sorted(root.iterdir()) if d.is_dir() and d.name not in ("person", "landscape")
                   for p in expand_paths([d])]
        missing = [n for n, v in (("person", people), ("landscape", scenery), ("other objects", objects)) if not v]
        if missing:
            raise FileNotFoundError(f"{root}: no images for {', '.join(missing)} (expects sub-folders person/, "
                                    "landscape/ and others)")
        return cls(sorted(people), sorted(objects), sorted(scenery))

    def load(self, path: Path, size: tuple[int, int]) -> np.ndarray:
        from wildwatch.data.loading import load_image

        img = load_image(path, draft_size=size)
        # cover-crop to the wanted aspect, then resize
        w, h = img.size
        tw, th = size
        s = max(tw / w, th / h)
        img = img.resize((max(tw, round(w * s)), max(th, round(h * s))), Image.Resampling.BICUBIC)
        w, h = img.size
        left, top = (w - tw) // 2, (h - th) // 2
        return np.asarray(img.crop((left, top, left + tw, top + th)))


def _seed_of(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 2**31 - 1))


def imagenet_c(name: str, x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    corrupt_tta = require("corrupt_tta", "robust", "the ImageNet-C corruptions")
    require("skimage", "robust", "the ImageNet-C corruptions")
    from corrupt_tta import corruptions as cc
    from skimage.util import random_noise

    seed = _seed_of(rng)
    with _global_rng_lock:  # corrupt-tta draws from numpy's global generator
        np.random.seed(seed)
        saved = cc.random_noise
        cc.random_noise = partial(random_noise, rng=seed)
        try:
            y = corrupt_tta.corrupt(x, severity=severity, corruption_name=name)
        finally:
            cc.random_noise = saved
    return np.clip(np.asarray(y, dtype=np.float32), 0, 255).round().astype(np.uint8)


def low_resolution(x: np.ndarray, severity: int, rng=None, px: int | None = None) -> np.ndarray:
    """Down to ``px`` on the long side (box filter), back up with bicubic: a small, soft image."""
    px = px or LOW_RES_PX[severity - 1]
    return O.to_uint8(O.low_resolution(O.from_uint8(x), px, "bicubic", uint8_steps=True))


def night_ir(x: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Grey (as an IR camera sees it), darkened by a gamma curve, with sensor noise."""
    noise = rng.normal(0.0, NIGHT_NOISE[severity - 1], x.shape[:2]).astype(np.float32)
    return O.to_uint8(O.night_ir(O.from_uint8(x), NIGHT_GAMMA[severity - 1], torch.from_numpy(noise), uint8_steps=True))


def heavy_jpeg(x: np.ndarray, severity: int, rng=None) -> np.ndarray:
    return O.jpeg(x, HEAVY_JPEG_QUALITY[severity - 1])


def motion_blur_any(x: np.ndarray, severity: int, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
    k = O.motion_kernel(length or MOTION_LENGTH[severity - 1], float(rng.uniform(0, 180)))
    return O.to_uint8(O.motion_blur(O.from_uint8(x), torch.from_numpy(k)[None], border="symmetric"))


def paste_over(x: np.ndarray, patch_source: Callable[[tuple[int, int]], np.ndarray], fraction: float,
               rng: np.random.Generator) -> np.ndarray:
    """Cover ``fraction`` of the frame with a patch whose centre lies in the middle half of the
    frame, where the animal usually is."""
    h, w = x.shape[:2]
    aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    ph, pw = O.occluder_size(fraction, aspect, h, w)
    cy = rng.uniform(0.25, 0.75) * h
    cx = rng.uniform(0.25, 0.75) * w
    top = int(np.clip(round(cy - ph / 2), 0, h - ph))
    left = int(np.clip(round(cx - pw / 2), 0, w - pw))
    y = x.copy()
    y[top:top + ph, left:left + pw] = patch_source((pw, ph))
    return y


def occlusion(kind: str, x: np.ndarray, severity: int, rng: np.random.Generator, pastes: Pastes) -> np.ndarray:
    pool = pastes.people if kind == "person" else pastes.objects
    path = pool[int(rng.integers(len(pool)))]
    return paste_over(x, lambda size: pastes.load(path, size), OCCLUDED_FRACTION[severity - 1], rng)


def small_in_frame(x: np.ndarray, severity: int, rng: np.random.Generator, pastes: Pastes) -> np.ndarray:
    """The photo shrunk to 1/4 or 1/16 of the frame area, placed at random in a scene."""
    h, w = x.shape[:2]
    scene = pastes.load(pastes.scenery[int(rng.integers(len(pastes.scenery)))], (w, h)).copy()
    s = math.sqrt(SMALL_AREA[severity - 1])
    sw, sh = max(1, round(w * s)), max(1, round(h * s))
    small = np.asarray(Image.fromarray(x).resize((sw, sh), Image.Resampling.BOX))
    top, left = int(rng.integers(0, h - sh + 1)), int(rng.integers(0, w - sw + 1))
    scene[top:top + sh, left:left + sw] = small
    return scene


def apply(name: str, x: np.ndarray, severity: int, rng: np.random.Generator, pastes: Pastes | None = None) -> np.ndarray:
    """The image under condition ``name`` at ``severity`` (``clean`` returns it unchanged)."""
    if name == "clean":
        return x
    cond = CONDITIONS.get(name)
    if cond is None:
        raise UnknownNameError(f"unknown condition {name!r}; choose from clean, {', '.join(CONDITIONS)}")
    if severity not in cond.severities:
        raise UsageError(f"{name}: severity must be one of {cond.severities}, got {severity}")
    if cond.family == "imagenet_c":
        return imagenet_c(name, x, severity, rng)
    if cond.family == "cctv":
        return {"low_resolution": low_resolution, "night_ir": night_ir, "heavy_jpeg": heavy_jpeg,
                "motion_blur_any": motion_blur_any}[name](x, severity, rng)
    if pastes is None:
        raise UsageError(f"{name} needs paste images (pass a folder with person/, landscape/ and other sub-folders)")
    if name == "small_in_frame":
        return small_in_frame(x, severity, rng, pastes)
    return occlusion("person" if name == "occlusion_person" else "object", x, severity, rng, pastes)


def item_rng(seed: int, condition: str, severity: int, index: int) -> np.random.Generator:
    """The generator for one image under one condition: independent of order and of resuming."""
    tag = zlib.crc32(condition.encode())
    return np.random.default_rng([seed, tag, severity, index])


def cells(names: Sequence[str]) -> list[tuple[str, int]]:
    return [(n, s) for n in names for s in CONDITIONS[n].severities]
