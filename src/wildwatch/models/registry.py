"""Model registry: every model is a small registered builder; callers use ``create_model``.

A model is added by one file: a module in this package (``wildwatch.models``) whose builders carry
``@register_model``. The registry finds such modules itself (it imports every module of the package
that uses the decorator), and installed packages can add models through the ``wildwatch.models``
entry-point group (each entry names a module to import). A name registered twice from two places
is an error that names both. ``create_model`` passes model arguments through to the builder and
refuses those it does not take.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wildwatch.errors import UnknownNameError, UsageError, WildwatchError
from wildwatch.plugins import Discovery

if TYPE_CHECKING:  # the registry itself needs no PyTorch: predicting with ONNX Runtime never imports it
    from torch import nn

ENTRY_POINT_GROUP = "wildwatch.models"
_MARKER = "@register_model"
_discovery = Discovery(__name__.rsplit(".", 1)[0], _MARKER, ENTRY_POINT_GROUP, skip=__name__)


class DuplicateModelError(WildwatchError, ValueError):
    """Two builders registered under one model name."""


@dataclass(frozen=True)
class TrainingDefaults:
    """The training settings a model comes with (the seed's own settings for the seed models);
    ``TrainConfig.resolved`` fills in from these what a run leaves unset."""

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
    defaults: TrainingDefaults
    description: str = ""
    preprocess: dict = field(default_factory=dict)

    @property
    def origin(self) -> str:
        """Where the builder is written: ``module.function``."""
        return f"{self.builder.__module__}.{self.builder.__qualname__}"

    def arguments(self) -> dict[str, Any]:
        """The model arguments the builder takes (beyond ``num_classes``) and their defaults."""
        params = inspect.signature(self.builder).parameters
        return {n: (None if p.default is inspect.Parameter.empty else p.default) for n, p in params.items()
                if n != "num_classes" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}

    def takes_any_argument(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(self.builder).parameters.values())

    def accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The subset of ``kwargs`` the builder takes (for callers that offer common settings)."""
        if self.takes_any_argument():
            return dict(kwargs)
        known = self.arguments()
        return {k: v for k, v in kwargs.items() if k in known}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(defaults: TrainingDefaults | None = None, preprocess: dict | None = None, name: str | None = None):
    """Decorator: register ``fn(num_classes, **model_arguments) -> nn.Module`` under ``name`` (its
    function name by default). Registering a name that another builder holds is an error."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        doc = (fn.__doc__ or "").strip().splitlines()
        entry = ModelEntry(name or fn.__name__, fn, defaults or TrainingDefaults(), doc[0] if doc else "",
                           dict(preprocess or {}))
        held = _REGISTRY.get(entry.name)
        if held is not None and held.origin != entry.origin:  # the same module imported again is no clash
            raise DuplicateModelError(f"model {entry.name!r} is registered twice: by {held.origin} and by "
                                      f"{entry.origin}; rename one of them")
        _REGISTRY[entry.name] = entry
        return fn

    return wrap


def model_modules() -> list[str]:
    """The modules of this package that register models (those that use ``@register_model``)."""
    return _discovery.modules()


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern, sorted."""
    _discovery.ensure()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def get_entry(name: str) -> ModelEntry:
    _discovery.ensure()
    if name not in _REGISTRY:
        raise UnknownNameError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def check_arguments(name: str, kwargs: dict[str, Any]) -> ModelEntry:
    """The model's entry, after making sure its builder takes every one of ``kwargs``."""
    entry = get_entry(name)
    unknown = sorted(set(kwargs) - set(entry.accepted(kwargs)))
    if unknown:
        takes = ", ".join(entry.arguments()) or "none"
        raise UsageError(f"model {name!r} takes no argument {', '.join(map(repr, unknown))} "
                         f"(its arguments: {takes})")
    return entry


def create_model(name: str, num_classes: int, **kwargs) -> nn.Module:
    """Build a registered model, e.g. ``create_model("seed_m4_gap", 11, image_size=112, pool="avg")``;
    the keyword arguments go to the builder, which must take them."""
    return check_arguments(name, kwargs).builder(num_classes=num_classes, **kwargs)
