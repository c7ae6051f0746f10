"""Classification metrics on arrays. No plotting here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def topk_accuracy(probs: np.ndarray, y: np.ndarray, k: int) -> float:
    if len(y) == 0:
        return float("nan")
    k = min(k, probs.shape[1])
    top = np.argsort(-probs, axis=1)[:, :k]
    return float((top == y[:, None]).any(axis=1).mean())


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> tuple[float, dict]:
    """ECE with equal-width confidence bins; also returns the reliability table."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    table: dict[str, list] = {"bin_lower": [], "bin_upper": [], "count": [], "confidence": [], "accuracy": []}
    for b in range(bins):
        m = which == b
        table["bin_lower"].append(float(edges[b]))
        table["bin_upper"].append(float(edges[b + 1]))
        table["count"].append(int(m.sum()))
        table["confidence"].append(float(conf[m].mean()) if m.any() else float("nan"))
        table["accuracy"].append(float(correct[m].mean()) if m.any() else float("nan"))
        if m.any():
            ece += m.mean() * abs(conf[m].mean() - correct[m].mean())
    return float(ece), table


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean())


@dataclass
class Results:
    """Predictions of one evaluation, with the metrics derived from them."""

    classes: list[str]
    probs: np.ndarray
    targets: np.ndarray

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(1)

    @property
    def accuracy(self) -> float:
        return float((self.preds == self.targets).mean()) if len(self.targets) else float("nan")

    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.targets, self.preds, len(self.classes))

    def per_class(self) -> dict[str, dict]:
        cm = self.confusion()
        out = {}
        for i, c in enumerate(self.classes):
            tp = cm[i, i]
            support = cm[i].sum()
            predicted = cm[:, i].sum()
            p = tp / predicted if predicted else 0.0
            r = tp / support if support else 0.0
            f1 = 2 * p * r / (p + r) if p + r else 0.0
            out[c] = {"precision": round(float(p), 4), "recall": round(float(r), 4), "f1": round(float(f1), 4),
                      "support": int(support)}
        return out

    def summary(self) -> dict:
        ece, _ = expected_calibration_error(self.probs, self.targets) if len(self.targets) else (float("nan"), None)
        pc = self.per_class()
        return {
            "n": len(self.targets),
            "accuracy": round(self.accuracy, 5),
            "top3_accuracy": round(topk_accuracy(self.probs, self.targets, 3), 5),
            "top5_accuracy": round(topk_accuracy(self.probs, self.targets, 5), 5),
            "macro_f1": round(float(np.mean([v["f1"] for v in pc.values()])), 5),
            "nll": round(nll(self.probs, self.targets), 5) if len(self.targets) else None,
            "ece": round(ece, 5),
            "per_class": pc,
            "counts": {c: int((self.targets == i).sum()) for i, c in enumerate(self.classes)},
        }


def auroc(scores_in: np.ndarray, scores_out: np.ndarray) -> float:
    """Probability that an unknown input scores higher than a known one (ties count half)."""
    s = np.concatenate([scores_in, scores_out])
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    ranks[order] = np.arange(1, len(s) + 1)
    # average ranks over ties
    _, inv, counts = np.unique(s, return_inverse=True, return_counts=True)
    sums = np.zeros(len(counts))
    np.add.at(sums, inv, ranks)
    ranks = (sums / counts)[inv]
    n_in, n_out = len(scores_in), len(scores_out)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))
