"""Models: a registry of builders (``create_model``, ``list_models``)."""

from wildwatch.models.registry import Recipe, create_model, get_entry, list_models, register_model

__all__ = ["Recipe", "create_model", "get_entry", "list_models", "register_model"]
