"""Pooling layers for the seed CNN family, chosen by name."""

from __future__ import annotations

from torch import nn

from wildwatch.errors import UnknownNameError

POOL_CHOICES = ("max", "avg", "fuzzy", "fuzzy1")


def make_pool(kind: str, kernel_size: int = 2, stride: int | None = None) -> nn.Module:
    """A 2-D pooling layer: ``max``, ``avg``, ``fuzzy`` (type-2) or ``fuzzy1`` (type-1)."""
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride)
    if kind == "fuzzy":
        from wildwatch.models.fuzzy import FuzzyPool2d

        return FuzzyPool2d(kernel_size, stride)
    if kind == "fuzzy1":
        from wildwatch.models.fuzzy import FuzzyPool2dType1

        return FuzzyPool2dType1(kernel_size, stride)
    raise UnknownNameError(f"unknown pooling {kind!r}; choose one of {', '.join(POOL_CHOICES)}")
