"""The learned relevance model of the media watch: does a post offer, seek or advertise wildlife
or wildlife products, or does it only talk about wildlife (news, seizures, conservation, zoos,
tourism, films)?

A linear model (logistic regression) on two kinds of features, trained by ``train`` below with
numpy alone, its weights shipped in the wheel (``resources/relevance_model.npz``, plain arrays:
loading it runs no code), nothing downloaded at run time:

- character 1- to 5-grams of the normalised text, hashed into 2**18 buckets (any language and
  script, misspellings and code words that share letters with known ones), counted with
  ``log1p`` and scaled to unit length;
- the term list's evidence (``monitor.terms``): which categories of words are present (product,
  code word, offer, buyer request, contact channel, price talk, news, conservation,
  zoo/tourism/film), a price with a currency, and whether a product and an offer, request,
  contact or price occur together, and hunting words with one (hunting words alone are talk).

The logit is calibrated (Platt scaling fitted on out-of-fold predictions of the training part),
so ``probability`` is a probability on the training distribution, and its threshold is the one
that maximised F1 out of fold. The model, its training data and its limits: docs/media_watch.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from wildwatch.monitor.terms import CATEGORIES, TRADE_CATEGORIES, find_hits, find_prices
from wildwatch.monitor.textscan import normalise

BITS = 18
DIM = 1 << BITS
NGRAMS = (1, 2, 3, 4, 5)
_MUL = np.uint64(0x100000001B3)  # FNV-1a prime: a stable hash (Python's str hash changes per process)
_SEED = np.uint64(0xCBF29CE484222325)
# hunting words are evidence of trade only beside a deal (a priced hunt is an offer; "trophy hunt" or
# "poachers caught" alone is talk): they enter as "hunting_with_deal", never on their own
_DENSE_CATEGORIES = [c for c in CATEGORIES if c != "hunting"]
DENSE = [f"has_{c}" for c in _DENSE_CATEGORIES] + ["price", "price_with_unit", "product_with_deal",
                                                   "request_with_product", "hunting_with_deal", "trade_categories",
                                                   "context_only"]
MODEL_FILE = "resources/relevance_model.npz"


def _hashed(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Bucket ids and weights of the text's character n-grams (unit length)."""
    padded = f" {text} "
    codes = np.frombuffer(padded.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    parts = []
    with np.errstate(over="ignore"):
        for n in NGRAMS:
            m = len(codes) - n + 1
            if m <= 0:
                continue
            h = np.full(m, _SEED ^ np.uint64(n), dtype=np.uint64)
            for j in range(n):
                h = (h ^ codes[j:j + m]) * _MUL
            parts.append(h >> np.uint64(64 - BITS))
    ids, counts = np.unique(np.concatenate(parts), return_counts=True)
    vals = np.log1p(counts.astype(np.float32))
    return ids.astype(np.int64), vals / np.float32(np.linalg.norm(vals) or 1.0)


def dense_features(hits, prices) -> np.ndarray:
    cats = {h.term.category for h in hits}
    product = bool(cats & {"product", "code"})
    deal = bool(cats & {"offer", "request", "contact", "price_word"}) or bool(prices)
    trade = len(cats & (set(TRADE_CATEGORIES) - {"hunting"}))
    context = bool(cats & {"news", "conservation", "leisure"}) and trade == 0
    values = [float(c in cats) for c in _DENSE_CATEGORIES] + [
        float(bool(prices)), float(any(p.unit for p in prices)), float(product and deal),
        float("request" in cats and product), float("hunting" in cats and deal), min(trade, 4) / 4.0, float(context)]
    return np.asarray(values, np.float32)


@dataclass
class PostFeatures:
    ids: np.ndarray
    vals: np.ndarray
    dense: np.ndarray
    hits: list
    prices: list
    text: str  # normalised


def featurise(text: str) -> PostFeatures:
    low = normalise(text)
    hits, prices = find_hits(low, normalised=True), find_prices(low, normalised=True)
    ids, vals = _hashed(low)
    return PostFeatures(ids, vals, dense_features(hits, prices), hits, prices, low)


@dataclass
class RelevanceModel:
    weights: np.ndarray  # DIM hashed weights, then one per DENSE feature
    bias: float
    platt: tuple[float, float]  # calibrated logit = a * raw + b
    threshold: float
    meta: dict

    def raw_logit(self, f: PostFeatures) -> float:
        w = self.weights
        return float(np.dot(w[f.ids], f.vals) + np.dot(w[DIM:], f.dense) + self.bias)

    def logit(self, f: PostFeatures) -> float:
        a, b = self.platt
        return a * self.raw_logit(f) + b

    def probability(self, f: PostFeatures) -> float:
        return float(1.0 / (1.0 + np.exp(-self.logit(f))))

    def top_ngrams(self, f: PostFeatures, k: int = 3) -> list[tuple[str, float]]:
        """The dense (term-list) features that pushed this post's score most, with their weights."""
        contrib = self.weights[DIM:] * f.dense
        order = np.argsort(-np.abs(contrib))[:k]
        return [(DENSE[i], float(contrib[i])) for i in order if contrib[i] != 0]

    def save(self, path: str | Path) -> None:
        np.savez_compressed(path, weights=self.weights.astype(np.float16), bias=np.float32(self.bias),
                            platt=np.asarray(self.platt, np.float32), threshold=np.float32(self.threshold),
                            meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8))

    @classmethod
    def load(cls, path: str | Path) -> RelevanceModel:
        with np.load(path, allow_pickle=False) as z:  # plain arrays only: loading never runs code
            weights = z["weights"].astype(np.float32)
            if weights.shape != (DIM + len(DENSE),):
                raise ValueError(f"{path}: relevance weights of shape {weights.shape}, expected {DIM + len(DENSE)}")
            a, b = (float(x) for x in z["platt"])  # Platt scaling: slope and intercept
            return cls(weights, float(z["bias"]), (a, b), float(z["threshold"]), json.loads(bytes(z["meta"]).decode()))


@lru_cache(maxsize=1)
def bundled_model() -> RelevanceModel:
    ref = resources.files("wildwatch").joinpath(MODEL_FILE)
    with resources.as_file(ref) as p:
        return RelevanceModel.load(p)


# ---------------------------------------------------------------- training (numpy only)


def _stack(feats: list[PostFeatures]):
    ids = np.concatenate([f.ids for f in feats])
    vals = np.concatenate([f.vals for f in feats])
    lens = np.asarray([len(f.ids) for f in feats])
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    dense = np.stack([f.dense for f in feats])
    return ids, vals, lens, starts, dense


def _raw(w: np.ndarray, b: float, X) -> np.ndarray:
    ids, vals, _, starts, dense = X
    return np.add.reduceat(vals * w[ids], starts) + dense @ w[DIM:] + b


def fit_logistic(feats: list[PostFeatures], y: np.ndarray, l2: float = 1e-3, epochs: int = 300,
                 lr: float = 0.05) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by full-batch Adam on the sparse rows."""
    X = _stack(feats)
    ids, vals, lens, _, dense = X
    n = len(y)
    pos = max(1, int(y.sum()))
    sw = np.where(y == 1, n / (2 * pos), n / (2 * max(1, n - pos))).astype(np.float64)
    w = np.zeros(DIM + dense.shape[1], np.float64)
    b = 0.0
    m1, m2 = np.zeros_like(w), np.zeros_like(w)
    mb1 = mb2 = 0.0
    for t in range(1, epochs + 1):
        p = 1 / (1 + np.exp(-_raw(w, b, X)))
        err = sw * (p - y) / n
        g: np.ndarray = np.bincount(ids, weights=vals * np.repeat(err, lens), minlength=DIM + dense.shape[1])
        g[DIM:] += dense.T @ err
        g += l2 * w
        gb = float(err.sum())
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.999 * m2 + 0.001 * g * g
        mb1, mb2 = 0.9 * mb1 + 0.1 * gb, 0.999 * mb2 + 0.001 * gb * gb
        step = lr * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        w -= step * m1 / (np.sqrt(m2) + 1e-8)
        b -= step * mb1 / (np.sqrt(mb2) + 1e-8)
    return w.astype(np.float32), float(b)


def fit_platt(z: np.ndarray, y: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """a, b of P(y=1) = sigmoid(a z + b) by Newton's method (with Platt's smoothed targets)."""
    pos, neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (pos + 1) / (pos + 2), 1 / (neg + 2))
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * z + b)))
        g = np.array([((p - t) * z).sum(), (p - t).sum()])
        s = p * (1 - p) + 1e-9
        H = np.array([[(s * z * z).sum(), (s * z).sum()], [(s * z).sum(), s.sum()]]) + 1e-6 * np.eye(2)
        d = np.linalg.solve(H, g)
        a, b = a - d[0], b - d[1]
        if np.abs(d).max() < 1e-9:
            break
    return float(a), float(b)


def best_threshold(p: np.ndarray, y: np.ndarray) -> float:
    """The probability threshold with the best F1 (ties: the higher threshold, fewer flags)."""
    best, best_f1 = 0.5, -1.0
    for th in np.unique(np.round(p, 3)):
        flag = p >= th
        tp = float((flag & (y == 1)).sum())
        f1 = 2 * tp / max(1.0, flag.sum() + y.sum())
        if f1 >= best_f1:
            best, best_f1 = float(th), f1
    return best


def train(texts: list[str], labels: list[int], folds: int = 5, seed: int = 0, l2: float = 1e-3,
          epochs: int = 300, meta: dict | None = None) -> tuple[RelevanceModel, dict]:
    """Fit the model on all ``texts``; calibrate and choose the threshold on out-of-fold predictions.
    Returns the model and its out-of-fold figures."""
    feats = [featurise(t) for t in texts]
    y = np.asarray(labels, np.float64)
    order = np.random.default_rng(seed).permutation(len(y))
    oof = np.zeros(len(y))
    for k in range(folds):
        test = order[k::folds]
        train_idx = np.setdiff1d(order, test)
        w, b = fit_logistic([feats[i] for i in train_idx], y[train_idx], l2, epochs)
        oof[test] = _raw(w, b, _stack([feats[i] for i in test]))
    a, c = fit_platt(oof, y)
    p = 1 / (1 + np.exp(-(a * oof + c)))
    th = best_threshold(p, y)
    w, b = fit_logistic(feats, y, l2, epochs)
    flag = p >= th
    tp = float((flag & (y == 1)).sum())
    report = {"n": len(y), "positives": int(y.sum()), "oof_precision": round(tp / max(1, flag.sum()), 4),
              "oof_recall": round(tp / max(1, y.sum()), 4), "threshold": round(th, 4),
              "brier_oof": round(float(((p - y) ** 2).mean()), 4)}
    model = RelevanceModel(w, b, (a, c), th, {**(meta or {}), "training": report, "l2": l2, "epochs": epochs,
                                             "features": {"bits": BITS, "ngrams": list(NGRAMS), "dense": DENSE}})
    return model, report
