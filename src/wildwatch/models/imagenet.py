"""The classes of the backbone's own ImageNet-1k classifier: names and a coarse kind per class.

The pretrained EfficientNet-Lite0 keeps its 1000-class classifier inside the network
(``effnet.EfficientNetLite._imagenet_fc``); it knows most of the 11 species' lookalikes (tiger,
lesser panda, ice bear, snow leopard, gorilla, hippo, Indian elephant, cougar...). The class names
and a coarse kind per class (animal, person, vehicle, scene, object) are package data.
"""

from __future__ import annotations

import functools
import json
from importlib import resources

IMAGENET_FILE = "resources/imagenet_classes.json"
KINDS = ("animal", "person", "vehicle", "scene", "object")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(name, kind) of each of the 1000 ImageNet classes, in the classifier's order."""
    data = json.loads(resources.files("wildwatch").joinpath(IMAGENET_FILE).read_text())
    return tuple((c["name"], c["kind"]) for c in data["classes"])


def imagenet_index(names) -> list[int]:
    """Indices of ImageNet classes by name; an unknown name is an error (a typo in package data)."""
    lookup = {n: i for i, (n, _) in enumerate(imagenet_classes())}
    missing = [n for n in names if n not in lookup]
    if missing:
        raise KeyError(f"not ImageNet class names: {missing}")
    return [lookup[n] for n in names]
