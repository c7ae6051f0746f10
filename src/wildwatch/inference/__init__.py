"""Inference: the Predictor and what it returns."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wildwatch.inference.prediction import Prediction
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models.bundle import bundled_model_path

__all__ = ["Prediction", "Predictor", "bundled_model_path"]
_HOME = {"Prediction": "wildwatch.inference.prediction", "Predictor": "wildwatch.inference.predictor",
         "bundled_model_path": "wildwatch.models.bundle"}


def __getattr__(name: str):
    # loaded on first use: the command line imports the output writers for its help, and a
    # command that never predicts (--version, events) need not load numpy and the model code
    if name in _HOME:
        return getattr(importlib.import_module(_HOME[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
