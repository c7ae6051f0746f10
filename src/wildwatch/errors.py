"""The errors wildwatch expects: each says in one line what went wrong and what to do.

The command line prints a ``WildwatchError`` as one line and exits with status 2; anything else is
a bug and keeps its traceback. Each subclass also derives from the built-in error it refines, so
``except ValueError`` (or ``KeyError``, ``ImportError``) still catches it.
"""

from __future__ import annotations

import importlib


class WildwatchError(Exception):
    """An expected error: bad input, a missing or damaged file, a missing optional part."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class UsageError(WildwatchError, ValueError):
    """Options or values that cannot work: an unknown name, a missing companion option, a bad code."""


class UnknownNameError(UsageError, KeyError):
    """A name (model, column, condition) that is not one of the known ones."""


class DataError(WildwatchError, ValueError):
    """Input data that cannot be used as given: an empty split, a feed that is not a feed."""


class ModelFileError(WildwatchError):
    """A model file is missing, malformed or does not match its architecture."""


class NeedsExtraError(WildwatchError, ImportError):
    """A command needs an optional part of wildwatch that is not installed."""


# what each optional part of the install brings (pyproject.toml's extras)
EXTRAS = {
    "train": "PyTorch, for training, evaluation, export, Grad-CAM and the torch backend",
    "serve": "the web service",
    "monitor": "video and stream reading (ffmpeg) and media feeds",
    "ray": "the Ray engine",
    "robust": "the corruption suite of the robustness benchmark",
}


def require(module: str, extra: str, purpose: str):
    """Import ``module``, or say which extra to install for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and module.split(".")[0] != exc.name.split(".")[0]:
            raise  # the module is there but something it needs is broken: a real error
        raise NeedsExtraError(f"{purpose} needs {module.split('.')[0]}, which comes with wildwatch[{extra}]: "
                              f"pip install 'wildwatch[{extra}]'") from exc


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
