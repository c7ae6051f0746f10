"""Inference: the Predictor and what it returns."""

from wildwatch.inference.predictor import Prediction, Predictor, bundled_model_path

__all__ = ["Prediction", "Predictor", "bundled_model_path"]
