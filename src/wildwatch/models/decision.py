"""What wildwatch finally says about a photo: one species, "uncertain" between two, or "unknown".

A network gives three things per photo (``Outputs``): its species logits, its open-set score and,
for pretrained backbones, the logits of the backbone's own ImageNet-1k classifier. ``Decision``
turns them into a ``Verdict`` by these rules, in this order (one test each in tests/test_decision.py):

1. **unknown** when the open-set score is above ``unknown_threshold``. For a pretrained backbone the
   score is computed inside the network (so an exported ONNX file gives it as its second output):
   the species logits and the ImageNet logits of every class that is none of the species share one
   softmax, and the score is the log of the mass on those other classes over the mass on the species
   (``extended_score``). The species logits are trained in that same softmax, starting from the
   ImageNet classes that are the species (``same`` in resources/decision.json), so a tiger keeps its
   ImageNet "tiger" logit above the lion's. The row says what the photo looks like instead (plain
   names, dog breeds as "a dog"); it never names one of the species.
2. **never unknown** for a network without an open-set score (the seed CNNs trained from scratch).
3. **uncertain** when the calibrated confidence that the top species is right is below
   ``uncertain_below``: the answer names the top two ("leopard or jaguar") instead of one.
4. **outside the range**: where the country is known and the top species does not live there, a
   photo-only answer is kept (flagged "captive or traded?") only from ``range_sure`` on; below it the
   answer is uncertain between the top species and the most likely one that lives there.
5. otherwise **the species**, with its calibrated confidence.

The confidence is calibrated on field photos where the model file was fitted with them
(``fit_decision``): a logistic regression on the top probability, its margin over the second and the
open-set score, fitted on photos of the species and photos of other things weighed equally, so "80%"
means right about 8 times in 10 on such a mix. Numpy only: deciding never needs PyTorch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np

from wildwatch.models.imagenet import imagenet_classes, imagenet_index

DECISION_FILE = "resources/decision.json"
UNCERTAIN_BELOW = 0.6  # calibrated confidence under which the answer names the top two
RANGE_SURE = 0.9  # a photo-only answer outside the species' range needs this much to stand alone
KNOWN_REJECTED = 0.025  # the share of photos of the species that the fitted threshold calls unknown
LOOKS_LIKE_MIN = 0.25  # an ImageNet class (or group) is named from this probability on
CLEAN_CONFIDENCE = 0.6  # ImageNet's top class contradicts a folder label from this probability on
OUT_OF_RANGE_NOTE = "outside its wild range: captive or traded?"
KINDS = ("animal", "person", "vehicle", "scene", "object")


class Outputs(NamedTuple):
    """A network's outputs for a batch of N photos."""

    logits: np.ndarray  # N x C species logits
    unknown: np.ndarray | None = None  # N open-set scores (higher: more likely none of the species)
    imagenet: np.ndarray | None = None  # N x 1000 logits of the backbone's ImageNet-1k classifier

    def subset(self, index: np.ndarray) -> Outputs:
        """The outputs of the photos ``index`` selects (a boolean mask or indices)."""
        return Outputs(self.logits[index], None if self.unknown is None else self.unknown[index],
                       None if self.imagenet is None else self.imagenet[index])


def concat_outputs(parts: Sequence[Outputs]) -> Outputs:
    """One Outputs from the Outputs of consecutive batches (an output the network lacks stays None)."""
    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        present = [a for a in arrays if a is not None]
        return np.concatenate(present) if present else None

    return Outputs(np.concatenate([p.logits for p in parts]), cat([p.unknown for p in parts]),
                   cat([p.imagenet for p in parts]))


@dataclass(frozen=True)
class Verdict:
    """The decision for one photo. ``kind``: "species", "uncertain" or "unknown"."""

    kind: str
    top: int  # index of the most likely species
    probs: np.ndarray  # temperature-scaled probabilities over the species (what top-k shows)
    confidence: float | None = None  # calibrated P(the named species is right); None when unknown
    candidates: tuple[int, ...] = ()  # uncertain: the two species it is between
    looks_like: str = ""  # unknown: what the photo looks like, in plain words ("" when unsure)
    looks_like_kind: str = ""  # unknown: animal, person, vehicle, scene or object
    out_of_range: bool = False
    note: str = ""


@functools.lru_cache(maxsize=1)
def table() -> dict:
    """resources/decision.json: which ImageNet classes are the species, contradict a label, group, and their plain names."""
    return json.loads(resources.files("wildwatch").joinpath(DECISION_FILE).read_text())


def same_indices(classes: Sequence[str]) -> list[list[int]]:
    """Per class, the ImageNet classes that are that species (empty for a class ImageNet lacks)."""
    same = table()["same"]
    return [imagenet_index(same.get(c, [])) for c in classes]


def absorbed_mask(classes: Sequence[str]) -> np.ndarray:
    """The ImageNet classes that are one of ``classes``: never "other", never what an unknown looks like."""
    m = np.zeros(1000, bool)
    for idx in same_indices(classes):
        m[idx] = True
    return m


def contradicted(q: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                 confidence: float = CLEAN_CONFIDENCE) -> np.ndarray:
    """Which photos' folder labels the ImageNet classifier contradicts: its top class has at least
    ``confidence`` and is another species' ImageNet class (a leopard in ``jaguars``) or a lookalike,
    drawing or toy (a lesser panda or a teddy in ``panda``), and is not the label's own class."""
    t = table()
    bad = absorbed_mask(classes)
    bad[imagenet_index(t["contradicting"])] = True
    top, conf = q.argmax(1), q.max(1)
    own = np.stack([np.isin(top, imagenet_index(t["same"].get(c, []) + t["also_own"].get(c, []))) for c in classes])
    return (conf >= confidence) & bad[top] & ~own[labels, np.arange(len(labels))]


def logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(1)
    return m + np.log(np.exp(a - m[:, None]).sum(1))


def softmax(a: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(a, np.float64) / temperature
    z = np.exp(z - z.max(1, keepdims=True))
    return z / z.sum(1, keepdims=True)


def extended_score(logits: np.ndarray, imagenet: np.ndarray, absorbed: np.ndarray) -> np.ndarray:
    """log(mass on the ImageNet classes that are none of the species) - log(mass on the species), in one
    softmax over both: what a backbone network computes as its open-set output (numpy copy, for checks)."""
    return logsumexp(np.asarray(imagenet, np.float64)[:, ~absorbed]) - logsumexp(np.asarray(logits, np.float64))


@functools.lru_cache(maxsize=1)
def _names_and_groups() -> tuple[np.ndarray, np.ndarray, list[tuple[str, str, np.ndarray]]]:
    """(plain name per ImageNet class, kind per class, [(group name, kind, member mask)])."""
    t = table()
    names = imagenet_classes()
    plain = np.array([t["plain_names"].get(n, n) for n, _ in names], dtype=object)
    kinds = np.array([k for _, k in names])
    grouped = np.zeros(1000, bool)
    groups = []
    for name, (first, last) in t["groups"].items():
        member = np.zeros(1000, bool)
        member[first:last + 1] = True
        grouped |= member
        groups.append((name, str(kinds[first]), member))
    for j in np.where(~grouped)[0]:
        member = np.zeros(1000, bool)
        member[j] = True
        groups.append((str(plain[j]), str(kinds[j]), member))
    return plain, kinds, groups


def looks_like(imagenet_logits: np.ndarray, absorbed: np.ndarray,
               minimum: float = LOOKS_LIKE_MIN) -> list[tuple[str, str]]:
    """Per photo: (what it looks like in plain words, its kind), from ImageNet's classes that are none of
    the species (``absorbed`` left out, so an unknown never "looks like" one of them). A group (118 dog
    breeds: "dog") counts as one. People: ImageNet has no person class, so a photo whose mass is mostly
    on clothes is "person". Below ``minimum`` for every class or group: ("", the kind with most mass)."""
    _, kinds, groups = _names_and_groups()
    q = softmax(np.asarray(imagenet_logits, np.float64)[:, ~absorbed])
    keep = [(n, k, m[~absorbed]) for n, k, m in groups if m[~absorbed].any()]
    mass = np.stack([q[:, m].sum(1) for _, _, m in keep], 1)
    kind_mass = np.stack([q[:, kinds[~absorbed] == k].sum(1) for k in KINDS], 1)
    out = []
    for i in range(len(q)):
        j = int(mass[i].argmax())
        name, kind = keep[j][0], keep[j][1]
        top_kind = KINDS[int(kind_mass[i].argmax())]
        if top_kind == "person" and kind != "person":
            out.append(("", "person"))
        elif mass[i, j] >= minimum:
            out.append((name if kind in ("animal", "vehicle", "scene") else "", kind))
        else:
            out.append(("", top_kind))
    return out


def confidence_inputs(probs: np.ndarray, unknown: np.ndarray | None) -> np.ndarray:
    """N x 3 inputs of the confidence calibration: logit of the top probability, log of its ratio to the
    second, the open-set score (0 for a network without one)."""
    p = np.sort(probs, 1)[:, ::-1]
    p1, p2 = np.clip(p[:, 0], 1e-9, 1 - 1e-9), np.clip(p[:, 1], 1e-9, 1.0)
    u = np.zeros(len(p)) if unknown is None else np.asarray(unknown, np.float64)
    return np.stack([np.log(p1) - np.log1p(-p1), np.log(p1) - np.log(p2), u], 1)


@dataclass(frozen=True)
class Decision:
    """The fitted decision of one model (stored in its metadata as ``decision``)."""

    classes: tuple[str, ...]
    unknown_threshold: float | None = None  # None: the network has no open-set score
    temperature: float = 1.0
    calibration: tuple[float, ...] | None = None  # weights on ``confidence_inputs`` and a bias
    uncertain_below: float = UNCERTAIN_BELOW
    range_sure: float = RANGE_SURE
    fitted_on: str = ""  # what the threshold and the calibration were fitted on, in words

    @classmethod
    def from_meta(cls, meta: dict) -> Decision:
        d = dict(meta.get("decision") or {})
        d["classes"] = tuple(meta["classes"])
        if d.get("calibration") is not None:
            d["calibration"] = tuple(d["calibration"])
        d.setdefault("temperature", float(meta.get("temperature", 1.0)))
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def to_meta(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("classes")
        d["calibration"] = None if self.calibration is None else [float(v) for v in self.calibration]
        return d

    @functools.cached_property
    def absorbed(self) -> np.ndarray:
        return absorbed_mask(self.classes)

    def confidence(self, probs: np.ndarray, unknown: np.ndarray | None) -> np.ndarray:
        """Calibrated P(the top species is right), or the top probability without a calibration."""
        if self.calibration is None:
            return probs.max(1)
        w = np.asarray(self.calibration, np.float64)
        return 1 / (1 + np.exp(-np.clip(confidence_inputs(probs, unknown) @ w[:-1] + w[-1], -50, 50)))

    def decide(self, out: Outputs, countries: Sequence[str | None] | None = None) -> list[Verdict]:
        """One Verdict per photo; ``countries``: where each photo was taken, when known (ISO codes)."""
        probs = softmax(out.logits, self.temperature)
        conf = self.confidence(probs, out.unknown)
        unknown = (np.zeros(len(probs), bool) if out.unknown is None or self.unknown_threshold is None
                   else np.asarray(out.unknown) > self.unknown_threshold)
        seen = (looks_like(out.imagenet[unknown], self.absorbed) if out.imagenet is not None and unknown.any()
                else [("", "animal")] * int(unknown.sum()))
        seen_iter = iter(seen)
        verdicts = []
        for i, p in enumerate(probs):
            if unknown[i]:
                name, kind = next(seen_iter)
                verdicts.append(Verdict("unknown", int(p.argmax()), p, None, (), name, kind))
            else:
                verdicts.append(self._named(p, float(conf[i]), countries[i] if countries else None))
        return verdicts

    def _named(self, p: np.ndarray, conf: float, country: str | None) -> Verdict:
        """Rules 3-5 for a photo that is not unknown."""
        from wildwatch.field import possible_in

        order = np.argsort(-p)
        top = int(order[0])
        if country:
            possible = np.array([possible_in(c, country) is not False for c in self.classes])
            if not possible[top]:
                if conf >= self.range_sure:
                    return Verdict("species", top, p, conf, (), out_of_range=True, note=OUT_OF_RANGE_NOTE)
                local = [int(j) for j in order if possible[j]]
                pair = (top, local[0]) if local else (top, int(order[1]))
                return Verdict("uncertain", top, p, conf, pair, out_of_range=True,
                               note=f"outside its wild range in {country}, and not sure enough from the photo alone")
        if conf < self.uncertain_below:
            return Verdict("uncertain", top, p, conf, (top, int(order[1])))
        return Verdict("species", top, p, conf)


# ---- fitting ----------------------------------------------------------------------------------

def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood (golden-section search on log T)."""
    def nll(log_t: float) -> float:
        p = softmax(logits, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())

    lo, hi = np.log(0.05), np.log(20.0)
    g = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if nll(a) < nll(b) else (a, hi)
    return float(np.exp((lo + hi) / 2))


def fit_logistic(x: np.ndarray, y: np.ndarray, weights: np.ndarray, c: float = 1.0) -> np.ndarray:
    """L2-regularised weighted logistic regression by Newton's method: weights, then the bias (not penalised)."""
    x1 = np.concatenate([x, np.ones((len(x), 1))], 1)
    reg = np.r_[np.ones(x.shape[1]) / c, 0.0]
    w = np.zeros(x1.shape[1])
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(x1 @ w, -50, 50)))
        grad = x1.T @ (weights * (p - y)) + reg * w
        hess = (x1 * (weights * p * (1 - p))[:, None]).T @ x1 + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


def fit_decision(classes: Sequence[str], known: Outputs, labels: np.ndarray, other: Outputs | None = None,
                 known_rejected: float = KNOWN_REJECTED, fitted_on: str = "") -> Decision:
    """The one fit every recipe calls. ``known``: outputs for photos of the species (``labels``), ``other``:
    for photos of none of them. The temperature minimises the NLL of ``known``; the unknown threshold calls
    ``known_rejected`` of ``known`` unknown; with at least 10 ``other`` photos, the confidence is calibrated
    on both sides weighed equally (other photos that pass the threshold count as wrong answers)."""
    temperature = fit_temperature(known.logits, labels)
    threshold = None
    if known.unknown is not None:
        threshold = float(np.quantile(known.unknown, 1 - known_rejected))
    calibration = None
    if other is not None and len(other.logits) >= 10 and len(known.logits) >= 10:
        calibration = tuple(float(v) for v in _fit_calibration(known, labels, other, temperature, threshold))
    return Decision(tuple(classes), threshold, temperature, calibration, fitted_on=fitted_on)


def _fit_calibration(known: Outputs, labels: np.ndarray, other: Outputs, temperature: float,
                     threshold: float | None) -> np.ndarray:
    """P(right) from ``confidence_inputs`` on the photos each side that the threshold lets through."""
    def passed(o: Outputs) -> np.ndarray:
        return np.ones(len(o.logits), bool) if threshold is None or o.unknown is None else o.unknown <= threshold

    pk, po = softmax(known.logits, temperature), softmax(other.logits, temperature)
    mk, mo = passed(known), passed(other)
    x = np.concatenate([confidence_inputs(pk, known.unknown)[mk], confidence_inputs(po, other.unknown)[mo]])
    y = np.r_[(pk.argmax(1) == labels)[mk].astype(float), np.zeros(int(mo.sum()))]
    # each side weighs as much as its whole set: a 50/50 mix of photos of the species and of other things
    w = np.r_[np.full(int(mk.sum()), 1 / len(mk)), np.full(int(mo.sum()), 1 / len(mo))]
    return fit_logistic(x, y, w * len(w) / w.sum())
