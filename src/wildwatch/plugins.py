"""Registries that fill themselves (models, output writers, monitor sources): the modules of a
package that use its registering decorator, and the modules that installed packages name in an
entry-point group. Importing them runs their decorators; no list of names is kept anywhere."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from pathlib import Path


def marked_modules(package: str, marker: str, skip: str = "") -> list[str]:
    """The modules of ``package`` (its own files, not sub-packages; ``skip`` left out) whose source
    holds ``marker`` (the registering decorator), sorted. Read as text: nothing is imported here."""
    found = []
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__, package + "."):
        if info.ispkg or info.name == skip:
            continue
        spec = importlib.util.find_spec(info.name)
        origin = spec.origin if spec is not None else None
        if origin and origin.endswith(".py") and marker in Path(origin).read_text(encoding="utf-8"):
            found.append(info.name)
    return sorted(found)


def entry_point_modules(group: str) -> list[str]:
    """The modules installed packages name in the entry-point ``group``, sorted."""
    from importlib.metadata import entry_points

    return sorted(ep.value.split(":")[0] for ep in entry_points(group=group))


def import_registering(package: str, marker: str, group: str, skip: str = "") -> None:
    """Import every module that registers into ``package``'s registry (which runs its decorators)."""
    for module in [*marked_modules(package, marker, skip), *entry_point_modules(group)]:
        importlib.import_module(module)


class Discovery:
    """One registry's discovery, run once: ``ensure`` imports every module that registers into it
    (``package``'s modules that use ``marker``, ``skip`` left out, and the entry-point ``group``'s)."""

    def __init__(self, package: str, marker: str, group: str, skip: str = ""):
        self.package, self.marker, self.group, self.skip = package, marker, group, skip
        self.done = False

    def modules(self) -> list[str]:
        """The package's own registering modules (read as text, not imported)."""
        return marked_modules(self.package, self.marker, self.skip)

    def ensure(self) -> None:
        if not self.done:
            import_registering(self.package, self.marker, self.group, self.skip)
            self.done = True
