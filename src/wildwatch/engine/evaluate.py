"""Evaluate a trained model on a split: metrics, confusion matrix, calibration, error gallery."""

from __future__ import annotations

import csv
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wildwatch.data.discover import Sample
from wildwatch.data.loading import load_image
from wildwatch.data.splits import split_for_model
from wildwatch.errors import DataError
from wildwatch.inference.predictor import Predictor
from wildwatch.models.decision import Outputs, concat_outputs
from wildwatch.reports.metrics import Results, expected_calibration_error, softmax


def center_crop_area(fraction: float) -> Callable[[Image.Image], Image.Image]:
    """A centred crop keeping ``fraction`` of the area (a partial view of the animal)."""

    def f(img: Image.Image) -> Image.Image:
        w, h = img.size
        s = math.sqrt(fraction)
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        left, top = (w - cw) // 2, (h - ch) // 2
        return img.crop((left, top, left + cw, top + ch))

    return f


def random_crop_area(fraction: float, seed: int = 0) -> Callable[[Image.Image], Image.Image]:
    """A crop of ``fraction`` of the area at a random place, repeatable per image size and order."""
    rng = random.Random(seed)

    def f(img: Image.Image) -> Image.Image:
        w, h = img.size
        s = math.sqrt(fraction)
        cw, ch = max(1, round(w * s)), max(1, round(h * s))
        left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
        return img.crop((left, top, left + cw, top + ch))

    return f


def squash(size: int = 256) -> Callable[[Image.Image], Image.Image]:
    """Every image resized to size x size first, so the source size cannot be a shortcut."""
    return lambda img: img.resize((size, size), Image.Resampling.BICUBIC)


VIEWS: dict[str, Callable[[], Callable[[Image.Image], Image.Image]]] = {
    "center_40pct": lambda: center_crop_area(0.4),
    "center_20pct": lambda: center_crop_area(0.2),
    "random_40pct": lambda: random_crop_area(0.4),
    "squash_256": lambda: squash(256),
}


def collect(predictor: Predictor, data: Path, samples, view: Callable | None = None, batch_size: int = 64,
            desc: str = "evaluating") -> Outputs:
    """The network's outputs for samples, optionally through a view applied before the transform."""
    draft = None if view is not None else (predictor.preprocess.resize_size,) * 2
    parts = []
    for i in tqdm(range(0, len(samples), batch_size), desc=desc, unit="batch", leave=False):
        imgs = [load_image(data / s.relpath, draft_size=draft) for s in samples[i:i + batch_size]]
        if view is not None:
            imgs = [view(im) for im in imgs]
        parts.append(predictor.outputs(predictor.pixels(imgs)))
    return concat_outputs(parts)


def decision_summary(predictor: Predictor, outputs: Outputs, targets: np.ndarray) -> tuple[dict, list]:
    """What the decision answers on labelled photos: named right or wrong, uncertain, called unknown."""
    verdicts = predictor.active_decision.decide(outputs)
    kinds = np.array([v.kind for v in verdicts])
    right = np.array([v.kind == "species" and v.top == t for v, t in zip(verdicts, targets)])
    named = kinds == "species"
    summary = {"named_right": right.mean(), "named_wrong": (named & ~right).mean(), "uncertain": (kinds == "uncertain").mean(),
               "rejected": (kinds == "unknown").mean(), "precision": right.sum() / max(int(named.sum()), 1)}
    return {k: round(float(v), 5) for k, v in summary.items()}, verdicts


def size_bucket(w: int, h: int) -> str:
    if (w, h) == (256, 256):
        return "exactly 256x256"
    m = max(w, h)
    return "longest side < 256" if m < 256 else "longest side >= 256"


def evaluate_model(model_path: str | Path, data: str | Path, out: str | Path, split_name: str = "test",
                   views: bool = True, batch_size: int = 64, exclude: str | Path | None = None,
                   species_model: str | Path | None = None) -> dict:
    """Write metrics.json, confusion_matrix.png/.csv, reliability.png and misclassified.html to ``out``."""
    from wildwatch.reports.plots import plot_confusion, plot_reliability

    model_path, data, out = Path(model_path), Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor.from_file(model_path, species_model=species_model)
    split, same_data = split_for_model(model_path, predictor.meta, data)
    samples = split.part(split_name)
    if not samples:
        raise DataError(f"split {split_name!r} of {data} is empty")
    classes = predictor.classes
    idx = {c: i for i, c in enumerate(classes)}
    targets = np.array([idx[s.label] for s in samples])
    outputs = collect(predictor, data, samples, desc=f"{split_name} split")
    res = Results(classes, softmax(outputs.logits, predictor.temperature), targets)
    decided, verdicts = decision_summary(predictor, outputs, targets)
    summary = {"model": str(model_path), "data": str(data), "split": split_name,
               "data_fingerprint_matches": same_data, **res.summary(), "decision": decided}
    if exclude is not None:
        summary["without_flagged"] = _without_flagged(Path(exclude), samples, res.preds, targets)
    summary["by_source_size"] = _by_source_size(data, samples, res.preds, targets)
    if views:
        summary["views"] = {"full": round(res.accuracy, 5)}
        for name, make in VIEWS.items():
            lg = collect(predictor, data, samples, view=make(), desc=name).logits
            summary["views"][name] = round(float((lg.argmax(1) == targets).mean()), 5)

    cm = res.confusion()
    _write_confusion(out / "confusion_matrix.csv", cm, classes)
    plot_confusion(cm, classes, out / "confusion_matrix.png", f"{split_name} split, accuracy {res.accuracy:.4f}")
    ece, table = expected_calibration_error(res.probs, targets)
    plot_reliability(table, out / "reliability.png", ece)
    summary["reliability"] = table
    _write_misclassified(out / "misclassified.html", model_path, data, samples, res, targets, split_name)
    _write_predictions(out / "predictions.csv", samples, classes, res, verdicts)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    _write_report(out, summary, decided, split_name)
    return summary


def _without_flagged(exclude: Path, samples: list[Sample], preds: np.ndarray, targets: np.ndarray) -> dict:
    """Accuracy without the photos a label audit flagged (its label_issues.csv)."""
    with open(exclude, newline="") as f:
        flagged = {row["path"] for row in csv.DictReader(f)}
    keep = np.array([s.relpath not in flagged for s in samples])
    return {"excluded": int((~keep).sum()), "n": int(keep.sum()),
            "accuracy": round(float((preds[keep] == targets[keep]).mean()), 5)}


def _by_source_size(data: Path, samples: list[Sample], preds: np.ndarray, targets: np.ndarray) -> dict:
    """Accuracy per source size bucket: where the size predicts the class, whether the model leans on it."""
    buckets: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        with Image.open(data / s.relpath) as im:
            buckets.setdefault(size_bucket(*im.size), []).append(i)
    return {b: {"n": len(ix), "accuracy": round(float((preds[ix] == targets[ix]).mean()), 5)}
            for b, ix in sorted(buckets.items())}


def _write_confusion(path: Path, cm: np.ndarray, classes: list[str]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["true \\ predicted", *classes])
        for c, row in zip(classes, cm):
            w.writerow([c, *row.tolist()])


def _write_misclassified(path: Path, model_path: Path, data: Path, samples: list[Sample], res: Results,
                         targets: np.ndarray, split_name: str) -> None:
    """A page of the photos the model got wrong: the given label and the model's top 3 for each."""
    from wildwatch.reports.html import image_cards_page

    wrong = np.nonzero(res.preds != targets)[0]
    cards = []
    for i in wrong:
        top = np.argsort(-res.probs[i])[:3]
        cards.append({"path": data / samples[i].relpath,
                      "lines": [samples[i].relpath, f"given: {samples[i].label}",
                                *[f"{res.classes[j]}: {res.probs[i, j]:.3f}" for j in top]]})
    image_cards_page(f"Misclassified: {len(wrong)} of {len(samples)} ({split_name} split)",
                     f"Model {model_path}. Each card shows the given label and the model's top 3.", cards, path)


def _write_predictions(path: Path, samples: list[Sample], classes: list[str], res: Results, verdicts: list) -> None:
    """One row per photo: its label, the network's top class and the decision's answer."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "predicted", "confidence", "answer", "answer_confidence"])
        for i, s in enumerate(samples):
            v = verdicts[i]
            answer = classes[v.top] if v.kind == "species" else v.kind
            w.writerow([s.relpath, s.label, classes[res.preds[i]], round(float(res.probs[i].max()), 5), answer,
                        "" if v.confidence is None else round(float(v.confidence), 5)])


def _write_report(out: Path, summary: dict, decided: dict, split_name: str) -> None:
    """report.html: the figures and the tables of ``summary``."""
    from wildwatch.reports.html import figures_page

    overall = [{**{k: summary[k] for k in ("n", "accuracy", "top3_accuracy", "macro_f1", "nll", "ece")},
                **{f"answer {k}": v for k, v in decided.items()}}]
    per_class = [{"class": c, **v} for c, v in summary["per_class"].items()]
    extra = [{"view": k, "accuracy": v} for k, v in summary.get("views", {}).items()]
    sizes = [{"source size": k, **v} for k, v in summary["by_source_size"].items()]
    figures_page(f"Evaluation: {split_name} split", out / "report.html",
                 [("confusion matrix (rows: true class)", out / "confusion_matrix.png"),
                  ("reliability diagram", out / "reliability.png")],
                 [("overall", overall), ("per class", per_class), ("partial views", extra), ("by source size", sizes)])
