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

Each part is scaled so that 1.0 is its threshold. The unknown score is the learned decision on all
of them where the model file has one (below: a logistic regression fitted against photos of other
things), else the largest of them.

``SAME`` names the ImageNet classes that are the 11 species (panthers and rhinos have none);
``CONTRADICTING`` the ImageNet classes that, when confident, contradict any folder label (a
lookalike, a drawing, a toy): they clean the training labels (``contradicted``).
"""

from __future__ import annotations

import functools

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

    def __init__(self, foreign: np.ndarray, support: np.ndarray, beta: np.ndarray,
                 combiner: np.ndarray | None = None, combiner_threshold: float | None = None):
        foreign = np.asarray(foreign, np.float32)
        self.inv_foreign = np.where(foreign > 0, 1.0 / np.maximum(foreign, 1e-6), 0.0).astype(np.float32)
        self.support = np.asarray(support, np.float32)
        self.beta = np.asarray(beta, np.float32)
        self.combiner = None if combiner is None else np.asarray(combiner, np.float64)
        self.combiner_threshold = (None if combiner_threshold is None
                                   else float(np.asarray(combiner_threshold).ravel()[0]))

    @classmethod
    def from_extras(cls, extras: dict[str, np.ndarray]) -> "OpenSet | None":
        if "openset_foreign" not in extras:
            return None
        return cls(extras["openset_foreign"], extras["openset_support"], extras["openset_beta"],
                   extras.get("openset_combiner"), extras.get("openset_combiner_threshold"))

    def unknown(self, maha: np.ndarray, q: np.ndarray, k: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """The unknown score, 1.0 = threshold: the learned decision where the model file has one, else the
        largest of the Mahalanobis distance over its threshold (``maha``) and the two ImageNet parts."""
        if self.combiner is not None:
            return combiner_scores(combiner_features(maha, q, k, probs, self), self.combiner, self.combiner_threshold)
        return np.maximum.reduce([maha, *self.scores(q, k)])

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


# ---- the learned decision ---------------------------------------------------------------------
# The parts above, each against its own threshold, miss lookalikes that none of them is sure of
# (a walrus: unlike the training photos, but not by enough; ImageNet sure of nothing). A logistic
# regression on the evidence of every part at once, fitted on validation photos of the species
# against photos of other animals and scenes, weighs them together. It needs "other" photos that
# are not ImageNet's own (the backbone has seen those): the recipe takes them with --negatives.
COMBINER_FEATURES = ("log Mahalanobis / threshold", "log foreign", "log lack of support", "log foreign / support mass",
                     "log (1 - 11-class confidence)", "ImageNet entropy", "log ImageNet top probability",
                     "log person mass", "log vehicle mass", "log scene mass", "log object mass")
COMBINER_C = 3.0  # inverse L2 strength, as in scikit-learn's LogisticRegression
COMBINER_KNOWN_REJECTED = 0.025  # the share of validation photos (labels not contradicted) it calls unknown


def combiner_features(maha: np.ndarray, q: np.ndarray, k: np.ndarray, probs: np.ndarray, rule: "OpenSet") -> np.ndarray:
    """N x 11 inputs of the learned decision (``COMBINER_FEATURES``): ``maha`` the Mahalanobis distance over its
    threshold, ``q`` the ImageNet probabilities, ``k`` the 11-class head's choice, ``probs`` its calibrated
    probabilities, ``rule`` the fitted thresholds of the ImageNet evidence."""
    foreign, lack = rule.scores(q, k)
    support = rule.support[k]
    other = (q * (_animal()[None] & (support == 0))).sum(1)
    held = (q * support).sum(1)
    kinds = _kinds()
    mass = [np.log((q * (kinds == kind)).sum(1) + 1e-4) for kind in ("person", "vehicle", "scene", "object")]
    return np.stack([np.log(np.maximum(maha, 1e-6)), np.log(foreign + 1e-4), np.log(np.maximum(lack, 1e-6)),
                     np.log(other + 1e-4) - np.log(held + 1e-4), np.log(1 - probs.max(1) + 1e-4),
                     -(q * np.log(q + 1e-12)).sum(1), np.log(q.max(1)), *mass], 1).astype(np.float64)


def fit_combiner(known: np.ndarray, other: np.ndarray, c: float = COMBINER_C,
                 known_rejected: float = COMBINER_KNOWN_REJECTED) -> dict[str, np.ndarray]:
    """L2-regularised logistic regression, "other" against "known", each side weighing as much in all
    (Newton's method: 12 parameters), and the threshold that calls ``known_rejected`` of ``known`` unknown.

    Returns ``openset_combiner`` (11 weights and the bias) and ``openset_combiner_threshold``."""
    if len(other) < 10 or len(known) < 10:
        raise ValueError(f"the learned open-set decision needs at least 10 photos each side, got {len(known)} "
                         f"known and {len(other)} other")
    x = np.concatenate([known, other])
    x1 = np.concatenate([x, np.ones((len(x), 1))], 1)
    y = np.r_[np.zeros(len(known)), np.ones(len(other))]
    s = np.where(y == 1, len(x) / (2 * len(other)), len(x) / (2 * len(known)))  # balanced sample weights
    reg = np.ones(x1.shape[1]) / c
    reg[-1] = 0.0  # the bias is not penalised
    w = np.zeros(x1.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(x1 @ w, -50, 50)))
        grad = x1.T @ (s * (p - y)) + reg * w
        hess = (x1 * (s * p * (1 - p))[:, None]).T @ x1 + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    threshold = float(np.quantile(known @ w[:-1] + w[-1], 1 - known_rejected))
    return {"openset_combiner": w.astype(np.float32), "openset_combiner_threshold": np.array([threshold], np.float32)}


def combiner_scores(x: np.ndarray, weights: np.ndarray, threshold: float) -> np.ndarray:
    """exp(logit − threshold): 1.0 at the threshold, as the other parts."""
    z = x @ np.asarray(weights[:-1], np.float64) + float(weights[-1])
    return np.exp(np.clip(z - threshold, -50, 50))


@functools.lru_cache(maxsize=1)
def _animal() -> np.ndarray:
    return animal_mask()


@functools.lru_cache(maxsize=1)
def _kinds() -> np.ndarray:
    return np.array([kind for _, kind in imagenet_classes()])
