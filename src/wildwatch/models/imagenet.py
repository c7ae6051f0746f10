"""What the backbone's own ImageNet-1k classifier says a photo shows.

The pretrained EfficientNet-Lite0 keeps its 1000-class classifier on the frozen features that the
unknown detector already computes, so asking it costs one small matrix product per photo. It knows
most of the 11 species' lookalikes (tiger, lesser panda, ice bear, snow leopard, gorilla, hippo,
Indian elephant, cougar...), which the 11-class head cannot tell apart from its own classes.

The classifier is stored in the model file with 4-bit weights (a scale per group of 64 inputs),
a sixth of its float32 size; the class names and a coarse kind per class (animal, person, vehicle,
scene, object) are package data. Numpy only: predicting never needs PyTorch for this.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

IMAGENET_FILE = "resources/imagenet_classes.json"
GROUP = 64  # inputs sharing one 4-bit scale
KINDS = ("animal", "person", "vehicle", "scene", "object")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(name, kind) of each of the 1000 ImageNet classes, in the classifier's order."""
    data = json.loads(resources.files("wildwatch").joinpath(IMAGENET_FILE).read_text())
    return tuple((c["name"], c["kind"]) for c in data["classes"])


def imagenet_index(names) -> list[int]:
    """Indices of ImageNet classes by name; an unknown name is an error (a typo in package data)."""
    lookup = {n: i for i, (n, _) in enumerate(imagenet_classes())}
    missing = [n for n in names if n not in lookup]
    if missing:
        raise KeyError(f"not ImageNet class names: {missing}")
    return [lookup[n] for n in names]


def animal_mask() -> np.ndarray:
    return np.array([k == "animal" for _, k in imagenet_classes()])


def quantise_head(weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """4-bit symmetric weights with one scale per row and group of ``GROUP`` inputs, two per byte."""
    w = np.asarray(weight, np.float32)
    rows, cols = w.shape
    if cols % GROUP or cols % 2:
        raise ValueError(f"a {rows}x{cols} classifier does not split into groups of {GROUP}")
    g = w.reshape(rows, cols // GROUP, GROUP)
    # the scale is stored in fp16: quantise with the stored value so the error stays within half a step
    scale = np.maximum(np.abs(g).max(2, keepdims=True) / 7.0, 1e-6).astype(np.float16).astype(np.float32)
    q = (np.clip(np.rint(g / scale), -8, 7).astype(np.int16) + 8).astype(np.uint8).reshape(rows, cols)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).astype(np.uint8)
    return {"imagenet_weight_q4": packed, "imagenet_weight_scale": scale[..., 0].astype(np.float16),
            "imagenet_bias": np.asarray(bias, np.float16)}


def dequantise_head(extras: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias) as float32 from what ``quantise_head`` stored."""
    packed = np.asarray(extras["imagenet_weight_q4"]).astype(np.uint8)
    scale = np.asarray(extras["imagenet_weight_scale"], np.float32)
    q = np.empty((packed.shape[0], packed.shape[1] * 2), np.int16)
    q[:, 0::2], q[:, 1::2] = packed & 15, packed >> 4
    w = (q - 8).astype(np.float32).reshape(len(q), -1, GROUP) * scale[..., None]
    return w.reshape(len(q), -1), np.asarray(extras["imagenet_bias"], np.float32)


class ImageNetHead:
    """Features of the frozen ImageNet head (N x 1280) → ImageNet class probabilities (N x 1000)."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.wt = np.ascontiguousarray(np.asarray(weight, np.float32).T)
        self.b = np.asarray(bias, np.float32)

    @classmethod
    def from_extras(cls, extras: dict[str, np.ndarray]) -> "ImageNetHead | None":
        return cls(*dequantise_head(extras)) if "imagenet_weight_q4" in extras else None

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        z = np.asarray(feats, np.float32) @ self.wt + self.b
        z -= z.max(1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(1, keepdims=True)
