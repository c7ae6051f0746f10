"""Models: a registry of builders (``create_model``, ``list_models``)."""

from wildwatch.models.registry import TrainingDefaults, create_model, get_entry, list_models, register_model

__all__ = ["TrainingDefaults", "create_model", "get_entry", "list_models", "register_model"]
