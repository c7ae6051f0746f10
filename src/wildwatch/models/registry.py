"""Model registry: every model is a small registered builder; callers use ``create_model``."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from wildwatch.errors import UnknownNameError

if TYPE_CHECKING:  # the registry itself needs no PyTorch: predicting with ONNX Runtime never imports it
    import torch.nn as nn


@dataclass(frozen=True)
class Recipe:
    """The training defaults a model comes with (the seed's own settings for the seed models)."""

    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 20
    step_size: int = 10
    gamma: float = 0.5
    image_size: int = 224
    weight_decay: float = 0.0
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    degrade_views: int = 0  # pretrained backbones: degraded views per training photo (robustness)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    recipe: Recipe
    description: str = ""
    preprocess: dict = field(default_factory=dict)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(recipe: Recipe | None = None, preprocess: dict | None = None):
    """Decorator: register ``fn(num_classes, **kw) -> nn.Module`` under its function name."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[fn.__name__] = ModelEntry(
            fn.__name__, fn, recipe or Recipe(), doc[0] if doc else "", dict(preprocess or {})
        )
        return fn

    return wrap


def _ensure_loaded() -> None:
    # Importing the modules runs their @register_model decorators.
    from wildwatch.models import effnet, seed  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _ensure_loaded()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("seed_m4_gap", 11, image_size=112, pool="avg")``."""
    return get_entry(name).builder(num_classes=num_classes, **kwargs)
