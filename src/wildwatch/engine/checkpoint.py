"""Training state for resume: a ``.pt`` of tensors and plain values, read with ``weights_only=True``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wildwatch.models.files import atomic_write


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Training state for resume: tensors, numbers, strings, lists and dicts only."""
    import torch

    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict[str, Any]:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
