"""Transform presets: ``train`` (augmentation) and ``eval`` (resize + centre crop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torchvision is imported only where its transforms are built (it is slow to import)
    from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def interpolation_mode(name: str):
    """torchvision's InterpolationMode for ``bilinear`` or ``bicubic``."""
    from torchvision import transforms as T

    return {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}[name]


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its input: size, normalisation, and the eval resize before the crop."""

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bilinear"

    @property
    def resize_size(self) -> int:
        return round(self.image_size / self.crop_pct)

    def to_json(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_json(cls, d: dict) -> Preprocess:
        return cls(
            image_size=int(d["image_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            crop_pct=float(d.get("crop_pct", 0.875)),
            interpolation=d.get("interpolation", "bilinear"),
        )


def eval_transform(p: Preprocess) -> T.Compose:
    """Resize the short side, centre-crop to the input size, normalise. Every image the same way,
    so the source size (a shortcut in this data) is not visible to the model."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(p.resize_size, interpolation=interpolation_mode(p.interpolation), antialias=True),
            T.CenterCrop(p.image_size),
            T.ToTensor(),
            T.Normalize(p.mean, p.std),
        ]
    )


class FastEvalTransform:
    """The eval transform (resize short side, centre crop, normalise) with Pillow and numpy only.

    Same geometry as torchvision's Resize + CenterCrop, several times faster per image, which
    matters when decoding shares two cores with the model."""

    def __init__(self, p: Preprocess):
        import numpy as np

        self.p = p
        self.resample = {"bilinear": 2, "bicubic": 3}[p.interpolation]
        self.scale = (1.0 / (255.0 * np.asarray(p.std, np.float32))).reshape(3, 1, 1)
        self.shift = (np.asarray(p.mean, np.float32) / np.asarray(p.std, np.float32)).reshape(3, 1, 1)

    def crop(self, img):
        """The resized, centre-cropped image (PIL), before normalising.

        Only the pixels inside the crop are computed: resizing the crop's box of the source
        straight to the output size samples the same points with the same filter as resizing the
        whole image and cropping afterwards (Pillow's filter still reads source pixels outside
        the box), at about half the cost."""
        size, short = self.p.image_size, self.p.resize_size
        w, h = img.size
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
        top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
        if (nw, nh) == (w, h):
            return img.crop((left, top, left + size, top + size))
        sx, sy = w / nw, h / nh
        return img.resize((size, size), self.resample,
                          box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))

    def uint8(self, img):
        """The crop as an HxWx3 uint8 array; ``normalise`` turns a stack of them into a batch."""
        import numpy as np

        return np.asarray(self.crop(img))

    def normalise(self, u):
        """uint8 crops (N, H, W, 3) → the normalised float32 batch (N, 3, H, W), in one pass."""
        import numpy as np

        c = np.ascontiguousarray(u.transpose(0, 3, 1, 2))
        x = np.empty(c.shape, np.float32)
        np.multiply(c, self.scale, out=x)
        x -= self.shift
        return x

    def array(self, img):
        """The normalised crop as a float32 array, channels first."""
        return self.normalise(self.uint8(img)[None])[0]

    def __call__(self, img):
        import torch

        return torch.from_numpy(self.array(img))


def train_transform(p: Preprocess) -> T.Compose:
    """Random resized crop, horizontal flip and colour jitter, then normalise."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(
                p.image_size, scale=(0.25, 1.0), interpolation=interpolation_mode(p.interpolation), antialias=True
            ),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.03),
            T.ToTensor(),
            T.Normalize(p.mean, p.std),
        ]
    )


def build_transform(preset: str, p: Preprocess) -> T.Compose:
    if preset == "train":
        return train_transform(p)
    if preset == "eval":
        return eval_transform(p)
    raise ValueError(f"unknown transform preset {preset!r}; choose 'train' or 'eval'")
