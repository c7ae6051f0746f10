"""The open-set decision: is a photo one of the 11 species, and if not, what does it look like?

Two sources of evidence, both from the frozen ImageNet part of the backbone:

- **Unlike every training photo**: the Mahalanobis distance of the frozen features to the nearest
  class mean (``wildwatch.inference.unknown``). Catches scenes, people, objects and far-off animals.
- **What the ImageNet-1k classifier says** (``wildwatch.models.imagenet``). For the class k the
  11-class head chose:
  * *foreign*: the largest probability of an ImageNet animal class that is not one of the 11 species,
    over a threshold per (k, ImageNet class) pair: ``tau`` for most pairs; for the pairs that real
    photos of k often get (a rhino is often "triceratops" or "hippopotamus", ImageNet having no
    rhino class) the 99.5th percentile of what the cleaned training photos of k show. Catches a
    tiger (ImageNet: "tiger") that the 11-class head calls a lion.
  * *support*: the ImageNet mass on classes that photos of k do get (the 11 species' own ImageNet
    classes and those usual for k); below the 1st percentile of the training photos of k, the
    photo is unlike how ImageNet sees k (an ocelot that the head calls a jaguar).

Each part is scaled so that 1.0 is its threshold; the unknown score is the largest of them.

``SAME`` names the ImageNet classes that are the 11 species (panthers and rhinos have none);
``CONTRADICTING`` the ImageNet classes that, when confident, contradict any folder label (a
lookalike, a drawing, a toy): they clean the training labels (``contradicted``).
"""

from __future__ import annotations

import numpy as np

from wildwatch.models.imagenet import animal_mask, imagenet_classes, imagenet_index

SAME = {
    "african_elephant": ["African elephant", "tusker"], "amur_leopard": ["leopard"], "arctic_fox": ["Arctic fox"],
    "cheetahs": ["cheetah"], "chimpanzee": ["chimpanzee"], "jaguars": ["jaguar"], "lion": ["lion"],
    "orangutan": ["orangutan"], "panda": ["giant panda"], "panthers": [], "rhino": [],
}
CONTRADICTING = [
    "tiger", "lesser panda", "ice bear", "snow leopard", "gorilla", "cougar", "lynx", "white wolf", "timber wolf",
    "brown bear", "American black bear", "sloth bear", "Indian elephant", "hippopotamus", "Samoyed", "Egyptian cat",
    "tabby", "tiger cat", "teddy", "comic book", "web site", "book jacket", "jigsaw puzzle", "mask", "toyshop",
]
# ImageNet classes that are no evidence against a label although they are another species' class:
# a black panther is a melanistic jaguar or leopard.
ALSO_OWN = {"panthers": ["jaguar", "leopard"]}
CLEAN_CONFIDENCE = 0.6
# A photo is "confident" enough to be named after an ImageNet class from this probability on.
LOOKS_LIKE_MIN = 0.25


def _same_mask(classes: list[str]) -> np.ndarray:
    m = np.zeros(1000, bool)
    m[imagenet_index([n for c in classes for n in SAME.get(c, [])])] = True
    return m


def contradicted(q: np.ndarray, labels: np.ndarray, classes: list[str],
                 confidence: float = CLEAN_CONFIDENCE) -> np.ndarray:
    """Which photos' folder labels the ImageNet classifier contradicts: its top class has at least
    ``confidence`` and is another species' ImageNet class (a leopard in ``jaguars``) or a lookalike,
    drawing or toy (a lesser panda or a teddy in ``panda``), and is not the label's own class."""
    bad = np.zeros(1000, bool)
    bad[imagenet_index(CONTRADICTING)] = True
    bad |= _same_mask(classes)
    top, conf = q.argmax(1), q.max(1)
    own = np.stack([np.isin(top, imagenet_index(SAME.get(c, []) + ALSO_OWN.get(c, []))) for c in classes])
    return (conf >= confidence) & bad[top] & ~own[labels, np.arange(len(labels))]


def fit_open_set(q: np.ndarray, labels: np.ndarray, classes: list[str], tau: float = 0.5,
                 tau_no_equivalent: float = 0.75, usual_fraction: float = 0.02, usual_quantile: float = 0.995,
                 support_quantile: float = 0.01) -> dict[str, np.ndarray]:
    """The per-class thresholds of the ImageNet evidence, from the (cleaned) training photos' ImageNet
    probabilities ``q``. ``tau_no_equivalent`` is the foreign threshold for a class without an
    ImageNet class of its own, whose photos spread their mass over neighbours.

    Returns ``openset_foreign`` (classes x 1000: the foreign threshold per pair, 0 = never foreign),
    ``openset_support`` (classes x 1000: 1 where the mass supports the class) and ``openset_beta``
    (the support below which a photo is unknown)."""
    n = len(classes)
    animal, same = animal_mask(), _same_mask(classes)
    other = animal & ~same
    foreign = np.zeros((n, 1000), np.float16)
    support = np.zeros((n, 1000), np.uint8)
    beta = np.zeros(n, np.float32)
    for k, name in enumerate(classes):
        qk = q[labels == k]
        if not len(qk):
            continue
        base = tau if SAME.get(name) else tau_no_equivalent
        usual = other & ((qk >= base).mean(0) >= usual_fraction)
        foreign[k, other] = base
        if usual.any():
            foreign[k, usual] = np.maximum(np.quantile(qk[:, usual], usual_quantile, axis=0), base)
        support[k] = same | usual | (animal & (qk.mean(0) >= 0.02))
        beta[k] = np.quantile((qk * support[k]).sum(1), support_quantile)
    return {"openset_foreign": foreign, "openset_support": support, "openset_beta": beta}


class OpenSet:
    """Scores photos with the fitted thresholds; ``scores`` gives (foreign, lack of support), 1 = threshold."""

    def __init__(self, foreign: np.ndarray, support: np.ndarray, beta: np.ndarray):
        foreign = np.asarray(foreign, np.float32)
        self.inv_foreign = np.where(foreign > 0, 1.0 / np.maximum(foreign, 1e-6), 0.0).astype(np.float32)
        self.support = np.asarray(support, np.float32)
        self.beta = np.asarray(beta, np.float32)

    @classmethod
    def from_extras(cls, extras: dict[str, np.ndarray]) -> "OpenSet | None":
        if "openset_foreign" not in extras:
            return None
        return cls(extras["openset_foreign"], extras["openset_support"], extras["openset_beta"])

    def scores(self, q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        foreign = (q * self.inv_foreign[k]).max(1)
        held = (q * self.support[k]).sum(1)
        return foreign, self.beta[k] / np.maximum(held, 1e-6)


def looks_like(q: np.ndarray, minimum: float = LOOKS_LIKE_MIN) -> list[tuple[str, str, float]]:
    """Per photo: (ImageNet class name, its kind, probability) of the top class, or ("", kind, p)
    when the classifier is not sure of any one class (the kind is then that of the kind with most mass)."""
    names = imagenet_classes()
    kinds = np.array([k for _, k in names])
    out = []
    for row in q:
        j = int(row.argmax())
        if row[j] >= minimum:
            out.append((names[j][0], names[j][1], float(row[j])))
        else:
            mass = {kd: float(row[kinds == kd].sum()) for kd in ("animal", "person", "vehicle", "scene", "object")}
            out.append(("", max(mass, key=mass.get), float(row[j])))
    return out
