"""Find probable label errors: out-of-fold predictions and confident learning.

Features come from a model's label-independent part (the logits of the frozen ImageNet-1k classifier
of a pretrained backbone), so no photo is judged by a classifier that was trained on its own label. A linear
classifier is trained on k-1 folds (folds never split a near-duplicate group) and predicts the
k-th. Confident learning (Northcutt, Jiang & Chuang, JAIR 2021) then sets a per-class threshold
t_j = mean predicted probability of class j over the photos labelled j, counts the confident
joint of given and predicted classes, and flags as many photos per off-diagonal cell as that
count estimates, those with the largest margins.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from wildwatch.data.discover import discover_images
from wildwatch.data.loading import ImageLoadError, load_image
from wildwatch.data.splits import assign_groups


def extract_features(predictor, root: Path, samples, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Label-independent features per sample (and a mask of the readable ones)."""
    feats, ok = [], np.ones(len(samples), bool)
    draft = (predictor.preprocess.resize_size,) * 2
    size = predictor.preprocess.image_size
    blank = Image.new("RGB", (size, size))
    for i in tqdm(range(0, len(samples), batch_size), desc="features", unit="batch"):
        images = []
        for j, s in enumerate(samples[i:i + batch_size]):
            try:
                images.append(load_image(root / s.relpath, draft_size=draft))
            except ImageLoadError:
                ok[i + j] = False
                images.append(blank)
        out = predictor.outputs(predictor.pixels(images))
        # the backbone's ImageNet logits know nothing of the labels; a network without them gives its own logits
        feats.append(out.imagenet if out.imagenet is not None else out.logits)
    return np.concatenate(feats), ok


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, epochs: int = 300, wd: float = 1e-4) -> torch.nn.Linear:
    torch.manual_seed(0)
    lin = torch.nn.Linear(x.shape[1], n_classes)
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2, weight_decay=wd)
    for _ in range(epochs):  # full batch: a few thousand rows of 1280 features
        loss = F.cross_entropy(lin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin


def out_of_fold_probs(feats: np.ndarray, labels: np.ndarray, groups: list[int], n_classes: int,
                      folds: int = 5, seed: int = 0) -> np.ndarray:
    x = torch.from_numpy(feats).float()
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    y = torch.from_numpy(labels).long()
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    fold_of_group = dict(zip(uniq, rng.permutation(len(uniq)) % folds))
    fold = np.array([fold_of_group[g] for g in groups])
    probs = np.zeros((len(labels), n_classes), np.float32)
    for k in tqdm(range(folds), desc="folds", unit="fold"):
        tr, te = fold != k, fold == k
        lin = fit_linear(x[tr], y[tr], n_classes)
        with torch.no_grad():
            probs[te] = F.softmax(lin(x[te]), 1).numpy()
    return probs


def confident_learning(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flagged mask, suggested class): confident joint, then pruning by noise rate.

    The confident joint C[i, j] counts photos labelled i whose confidently predicted class is j
    (p_j at or above class j's threshold). Rows are rescaled to the label counts, which estimates
    how many photos labelled i really are j; that many photos labelled i, those with the largest
    margin p_j - p_i, are flagged with j as the suggestion.
    """
    n, k = probs.shape
    thresholds = np.array([probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)])
    above = probs >= thresholds[None, :]
    confident = np.where(above.any(1), np.where(above, probs, -1.0).argmax(1), -1)
    joint = np.zeros((k, k))
    for i in range(k):
        for j in range(k):
            joint[i, j] = np.sum((labels == i) & (confident == j))
    counts = np.bincount(labels, minlength=k)
    scaled = joint / np.maximum(joint.sum(1, keepdims=True), 1) * counts[:, None]
    flagged = np.zeros(n, bool)
    suggested = probs.argmax(1)
    margin_best = np.full(n, -np.inf)
    for i in range(k):
        members = np.nonzero(labels == i)[0]
        for j in range(k):
            m = int(np.rint(scaled[i, j]))
            if j == i or m == 0:
                continue
            margin = probs[members, j] - probs[members, i]
            top = members[np.argsort(-margin)[:m]]
            top = top[probs[top, j] > probs[top, i]]
            better = probs[top, j] - probs[top, i] > margin_best[top]
            flagged[top] = True
            suggested[top[better]] = j
            margin_best[top[better]] = (probs[top, j] - probs[top, i])[better]
    suggested[~flagged] = labels[~flagged]
    return flagged, suggested


def label_audit(root: str | Path, model: str | Path | None, out: str | Path, folds: int = 5) -> dict:
    """Write label_issues.csv, label_issues.html and label_audit.json to ``out``."""
    from wildwatch.inference.predictor import Predictor
    from wildwatch.reports.html import image_cards_page

    root, out = Path(root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples, classes = discover_images(root)
    predictor = Predictor.from_file(model)
    feats, ok = extract_features(predictor, root, samples)
    samples = [s for s, good in zip(samples, ok) if good]
    feats = feats[ok]
    labels = np.array([classes.index(s.label) for s in samples])
    groups, _ = assign_groups(root, samples, progress=False)
    probs = out_of_fold_probs(feats, labels, groups, len(classes), folds)
    flagged, suggested = confident_learning(probs, labels)
    idx = np.nonzero(flagged)[0]
    idx = idx[np.argsort(-(probs[idx, suggested[idx]] - probs[idx, labels[idx]]))]
    rows = [{"path": samples[i].relpath, "given": classes[labels[i]], "suggested": classes[suggested[i]],
             "p_given": round(float(probs[i, labels[i]]), 4), "p_suggested": round(float(probs[i, suggested[i]]), 4)}
            for i in idx]
    with open(out / "label_issues.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "given", "suggested", "p_given", "p_suggested"])
        w.writeheader()
        w.writerows(rows)
    image_cards_page(f"Probable label errors: {len(rows)} of {len(samples)} photos",
                     "Out-of-fold predictions with confident learning. Check each by eye before relabelling.",
                     [{"path": root / r["path"], "lines": [r["path"], f"given: {r['given']} ({r['p_given']:.2f})",
                                                           f"suggested: {r['suggested']} ({r['p_suggested']:.2f})"]}
                      for r in rows], out / "label_issues.html")
    report = {"root": str(root), "photos": len(samples), "flagged": len(rows),
              "out_of_fold_accuracy": round(float((probs.argmax(1) == labels).mean()), 5),
              "flagged_per_class": {c: int(sum(r["given"] == c for r in rows)) for c in classes}}
    (out / "label_audit.json").write_text(json.dumps(report, indent=2))
    return report
