"""Transform presets: ``train`` (augmentation) and ``eval`` (resize + centre crop)."""

from __future__ import annotations

from dataclasses import dataclass

from torchvision import transforms as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_INTERPOLATION = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


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
        return int(round(self.image_size / self.crop_pct))

    def to_json(self) -> dict:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_json(cls, d: dict) -> "Preprocess":
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
    return T.Compose(
        [
            T.Resize(p.resize_size, interpolation=_INTERPOLATION[p.interpolation], antialias=True),
            T.CenterCrop(p.image_size),
            T.ToTensor(),
            T.Normalize(p.mean, p.std),
        ]
    )


class FastEvalTransform:
    """The eval transform (resize short side, centre crop, normalise) with Pillow and numpy only.

    Same geometry as torchvision's Resize + CenterCrop, about twice as fast per image, which
    matters when decoding shares two cores with the model."""

    def __init__(self, p: Preprocess):
        import numpy as np

        self.p = p
        self.resample = {"bilinear": 2, "bicubic": 3}[p.interpolation]
        self.scale = (1.0 / (255.0 * np.asarray(p.std, np.float32))).reshape(1, 1, 3)
        self.shift = (np.asarray(p.mean, np.float32) / np.asarray(p.std, np.float32)).reshape(1, 1, 3)

    def crop(self, img):
        """The resized, centre-cropped image (PIL), before normalising."""
        size, short = self.p.image_size, self.p.resize_size
        w, h = img.size
        if w <= h:
            nw, nh = short, int(short * h / w)
        else:
            nw, nh = int(short * w / h), short
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), self.resample)
        top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
        return img.crop((left, top, left + size, top + size))

    def array(self, img):
        import numpy as np

        a = np.asarray(self.crop(img), dtype=np.float32) * self.scale - self.shift
        return np.ascontiguousarray(a.transpose(2, 0, 1))

    def __call__(self, img):
        import torch

        return torch.from_numpy(self.array(img))


def train_transform(p: Preprocess) -> T.Compose:
    """Random resized crop, horizontal flip and colour jitter, then normalise."""
    return T.Compose(
        [
            T.RandomResizedCrop(
                p.image_size, scale=(0.25, 1.0), interpolation=_INTERPOLATION[p.interpolation], antialias=True
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
