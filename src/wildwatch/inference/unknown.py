"""Out-of-distribution scores: how unlike the known species an input is (higher = more unknown)."""

from __future__ import annotations

import numpy as np

from wildwatch.reports.metrics import softmax

# The Mahalanobis threshold rejects about 1% of known species: the 99th percentile of validation
# scores. The ImageNet evidence of the open-set decision (wildwatch.models.open_set) rejects about
# as many again, so that about 2-3% of photos of the 11 species are called unknown in all.
REJECT_QUANTILE = 0.99


def msp_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """1 - maximum softmax probability."""
    return 1.0 - softmax(logits, temperature).max(1)


def energy_score(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Negative free energy flipped so that higher = more unknown: -T·logsumexp(logits/T)."""
    z = logits / temperature
    m = z.max(1, keepdims=True)
    return -(temperature * (m[:, 0] + np.log(np.exp(z - m).sum(1))))


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, n_classes: int, shrinkage: float = 0.05) -> dict:
    """Class means and one shared, shrunk precision matrix of L2-normalised features."""
    import torch

    f = _normalise(features)
    means = np.stack([f[labels == c].mean(0) for c in range(n_classes)])
    centred = f - means[labels]
    cov = centred.T @ centred / len(f)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    precision = (precision + precision.T) / 2  # exactly symmetric, so it is stored as one triangle
    return {"ood_means": torch.from_numpy(means.astype(np.float32)),
            "ood_precision": torch.from_numpy(precision.astype(np.float32))}


class Mahalanobis:
    """Distance to the nearest class mean in the shared-covariance metric, with the parts that
    do not depend on the input computed once (they cost more than scoring a small batch)."""

    def __init__(self, means: np.ndarray, precision: np.ndarray):
        self.p = np.asarray(precision, dtype=np.float64)
        m = np.asarray(means, dtype=np.float64)
        # (f-μ)ᵀP(f-μ) = fᵀPf - 2 fᵀPμ + μᵀPμ: one matrix product per batch instead of one per class
        self.pm = self.p @ m.T
        self.mpm = np.einsum("kd,dk->k", m, self.pm)[None, :]

    def __call__(self, features: np.ndarray) -> np.ndarray:
        f = _normalise(features).astype(np.float64)
        dist = np.einsum("nd,nd->n", f @ self.p, f)[:, None] - 2 * f @ self.pm + self.mpm
        return dist.min(1)


def mahalanobis_score(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Distance to the nearest class mean in the shared-covariance metric."""
    return Mahalanobis(means, precision)(features)


def _normalise(f: np.ndarray) -> np.ndarray:
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


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
