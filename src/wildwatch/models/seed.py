"""The seed project's CNN family, rebuilt so that every model trains at any input size.

The first dense layer is sized from the input: at 224 px the m1-m4 convolutions leave
256 x 14 x 14 = 50,176 features, as in the seed.
"""

from __future__ import annotations

import torch
from torch import nn

from wildwatch.models.pooling import make_pool
from wildwatch.models.registry import TrainingDefaults, register_model


def _conv_stack(channels: tuple[int, ...], pool: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    c_in = 3
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(inplace=True), make_pool(pool, 2)]
        c_in = c
    return nn.Sequential(*layers)


def _flat_features(features: nn.Module, image_size: int) -> int:
    with torch.no_grad():
        was_training = features.training
        features.eval()
        n = features(torch.zeros(1, 3, image_size, image_size)).flatten(1).shape[1]
        features.train(was_training)
    return n


class SeedCNN(nn.Module):
    """Convolutional features, flattened (or globally averaged), then a dense head."""

    def __init__(self, features: nn.Module, head: nn.Module, global_pool: bool = False):
        super().__init__()
        self.features = features
        self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool else nn.Identity()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.global_pool(self.features(x)).flatten(1))

    def predict_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        """(logits, None, None): the seed CNNs have no open-set score and no ImageNet classifier."""
        return self(x), None, None

    def last_conv_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the last conv block's activations, logits), for Grad-CAM."""
        fmap = self.features(x)
        return fmap, self.head(self.global_pool(fmap).flatten(1))


@register_model(TrainingDefaults(lr=1e-3, batch_size=32, epochs=20, image_size=32))
def seed_m0(num_classes: int, image_size: int = 32, pool: str = "max") -> SeedCNN:
    """Seed model 0: two 4x4 convolutions, LeNet-like head (90, 61)."""
    features = nn.Sequential(
        nn.Conv2d(3, 6, 4), nn.ReLU(inplace=True), make_pool(pool, 2),
        nn.Conv2d(6, 16, 4), nn.ReLU(inplace=True), make_pool(pool, 2),
    )
    n = _flat_features(features, image_size)
    head = nn.Sequential(
        nn.Linear(n, 90), nn.ReLU(inplace=True), nn.Linear(90, 61), nn.Dropout(0.5), nn.Linear(61, num_classes)
    )
    return SeedCNN(features, head)


@register_model(TrainingDefaults(lr=1e-3, batch_size=32, epochs=20))
def seed_m1(num_classes: int, image_size: int = 224, pool: str = "max") -> SeedCNN:
    """Seed model 1: 4 conv blocks (32-64-128-256), dense 512-256 with dropout 0.5."""
    features = _conv_stack((32, 64, 128, 256), pool)
    n = _flat_features(features, image_size)
    head = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(n, 512), nn.ReLU(inplace=True),
        nn.Dropout(0.5), nn.Linear(512, 256), nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )
    return SeedCNN(features, head)


@register_model(TrainingDefaults(lr=1e-3, batch_size=32, epochs=20))
def seed_m2(num_classes: int, image_size: int = 224, pool: str = "max") -> SeedCNN:
    """Seed model 2: 4 conv blocks (32-64-128-256), dense 512-256-64 with dropout 0.2."""
    features = _conv_stack((32, 64, 128, 256), pool)
    n = _flat_features(features, image_size)
    head = nn.Sequential(
        nn.Dropout(0.2), nn.Linear(n, 512), nn.ReLU(inplace=True),
        nn.Dropout(0.2), nn.Linear(512, 256), nn.ReLU(inplace=True),
        nn.Dropout(0.2), nn.Linear(256, 64), nn.ReLU(inplace=True),
        nn.Linear(64, num_classes),
    )
    return SeedCNN(features, head)


def _bn_head(n_in: int, widths: tuple[int, ...], num_classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Dropout(0.4), nn.Linear(n_in, w), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
        n_in = w
    layers.append(nn.Linear(n_in, num_classes))
    return nn.Sequential(*layers)


def _m34(num_classes: int, image_size: int, pool: str) -> SeedCNN:
    features = _conv_stack((64, 128, 128, 256), pool)
    return SeedCNN(features, _bn_head(_flat_features(features, image_size), (512, 256, 128), num_classes))


@register_model(TrainingDefaults(lr=1e-4, batch_size=16, epochs=60, step_size=20, gamma=0.5))
def seed_m3(num_classes: int, image_size: int = 224, pool: str = "max") -> SeedCNN:
    """Seed model 3: 4 conv blocks (64-128-128-256), BatchNorm head 512-256-128; Adam 1e-4."""
    return _m34(num_classes, image_size, pool)


@register_model(TrainingDefaults(lr=1e-3, batch_size=8, epochs=200, step_size=10, gamma=0.5))
def seed_m4(num_classes: int, image_size: int = 224, pool: str = "max") -> SeedCNN:
    """Seed model 4 (the seed's final model): m3's network with Adam 1e-3, StepLR(10, 0.5), batch 8."""
    return _m34(num_classes, image_size, pool)


@register_model(TrainingDefaults(lr=1e-3, batch_size=32, epochs=30, step_size=10, gamma=0.5))
def seed_m4_gap(num_classes: int, image_size: int = 224, pool: str = "max") -> SeedCNN:
    """m4's convolutions with global average pooling and a small head (0.5M weights, not 26M)."""
    features = _conv_stack((64, 128, 128, 256), pool)
    return SeedCNN(features, _bn_head(256, (128,), num_classes), global_pool=True)
