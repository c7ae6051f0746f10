"""What the rest of wildwatch may ask of a network: no private attributes reached from outside.

Every registered network is a ``SpeciesNetwork``; pretrained backbones (EfficientNet-Lite) are also
a ``Backbone``, which the cached-feature recipe and the open-set decision use. Nothing here
imports PyTorch at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch


@runtime_checkable
class SpeciesNetwork(Protocol):
    """Any wildwatch network: logits, the outputs a runner returns, and its last convolution."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def predict_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(species logits, open-set score, ImageNet-1k logits); None for what the network does not have
        (see ``wildwatch.models.decision``)."""

    def last_conv_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(activations of the last convolutional stage, logits), with the graph between them (Grad-CAM)."""


@runtime_checkable
class Backbone(SpeciesNetwork, Protocol):
    """A pretrained network trained on cached activations of its frozen trunk."""

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen part: stem and blocks."""

    def head_features(self, t: torch.Tensor) -> torch.Tensor:
        """Trunk output → the pooled vector the species classifier sees."""

    def ood_features(self, t: torch.Tensor) -> torch.Tensor:
        """Trunk output → pooled features of the frozen ImageNet head (what the ImageNet classifier sees)."""

    def open_set_outputs(self, logits: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(open-set score, ImageNet logits) from species logits and ``ood_features``."""

    def species_head(self) -> torch.nn.Linear:
        """The species classifier."""

    def imagenet_head(self) -> torch.nn.Linear:
        """The frozen ImageNet-1k classifier on ``ood_features``."""

    def classify_pooled(self, f: torch.Tensor) -> torch.Tensor:
        """Pooled features → logits (dropout applies in training mode)."""


def as_network(model: object) -> SpeciesNetwork:
    """``model`` as a ``SpeciesNetwork`` (every registered network is one), checked."""
    if not isinstance(model, SpeciesNetwork):
        raise TypeError(f"{type(model).__name__} is not a wildwatch network (see models.interface.SpeciesNetwork)")
    return model


def as_backbone(model: object) -> Backbone:
    """``model`` as a pretrained ``Backbone``, checked."""
    if not isinstance(model, Backbone):
        raise TypeError(f"{type(model).__name__} is not a pretrained backbone (see models.interface.Backbone)")
    return model


def is_backbone(model: object) -> bool:
    """Whether ``model`` is a pretrained backbone (see ``Backbone``)."""
    return isinstance(model, Backbone)
