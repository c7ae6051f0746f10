"""Open-set figures of a model: does it say "not one of the 11" when that is true, and only then?

Scores, with the model as ``wildwatch classify`` runs it (the Predictor on files):
- the test split of the training data (every photo, and without the photos whose folder label the
  ImageNet classifier contradicts or that a label-audit CSV lists),
- ``ood_field`` (field photos of none of the 11 species, not from ImageNet) and ``ood_dev``
  (ImageNet sample photos).

``ood_field`` is split in two halves per label folder by a hash of the file name (``dev`` and
``held_out``, ``wildwatch.data.splits.hash_halves``). The bundled model's learned open-set decision
is fitted on the dev half (``wildwatch train --negatives ood_field --negatives-half dev``), so the
held-out half is the unbiased figure; ``--cross-fit`` also refits that decision on the held-out half
(the library's own fit, on this model's outputs) and scores the dev half with it, so that every
ood_field photo is scored by a decision not fitted on it ("crossfit" figures). Prints the figures
and writes results.json, report.md, report.html and rejected_per_label.png into --out.

    .venv/bin/python benchmarks/open_set.py --data ../shared/data/endangered11 \\
        --field ../shared/data/ood_field --dev ../shared/data/ood_dev --out runs/open_set
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

import numpy as np

LOOKALIKES = {"asian_elephant", "tiger", "red_panda", "polar_bear", "snow_leopard", "clouded_leopard", "ocelot",
              "serval", "puma", "gorilla", "hippo", "walrus", "bear"}


def raw_outputs(pred, root: Path, relpaths: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The runner's (logits, features) for photos, decoded as classify decodes them."""
    logits, feats = [], []
    for i in range(0, len(relpaths), 64):
        lg, ft = pred.outputs(pred.pixels([pred.read(root / r)[0] for r in relpaths[i:i + 64]]))
        logits.append(lg)
        feats.append(ft)
    return np.concatenate(logits), np.concatenate(feats)


def predict(pred, root: Path, relpaths: list[str]) -> list:
    from tqdm import tqdm

    return list(tqdm(pred.predict_paths([root / r for r in relpaths]), total=len(relpaths), desc=root.name,
                     unit="img"))


def auroc(known: list[float], other: list[float]) -> float:
    from wildwatch.inference.unknown import auroc as _auroc

    return _auroc(np.array(known, float), np.array(other, float))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file or run folder (default: the bundled model)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--robust", action="store_true", help="species from the bundled fine-tuned network")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--field", type=Path, required=True)
    ap.add_argument("--dev", type=Path, default=None)
    ap.add_argument("--exclude", type=Path, default=None, help="label-audit CSV (path column) of flagged photos")
    ap.add_argument("--cross-fit", action="store_true", help="score the dev half with the decision refitted on "
                    "the held-out half (models with a learned open-set decision)")
    ap.add_argument("--out", type=Path, default=Path("runs/open_set"))
    args = ap.parse_args()

    from wildwatch.data.discover import expand_paths
    from wildwatch.data.splits import hash_halves, split_for_model
    from wildwatch.inference.predictor import Predictor
    from wildwatch.models.open_set import contradicted

    pred = Predictor.from_file(args.model, backend=args.backend, species_model="bundled" if args.robust else None)
    split, _ = split_for_model(pred.model_path, pred.meta, args.data)
    test = split.part("test")
    test_preds = predict(pred, args.data, [s.relpath for s in test])
    labels = [s.label for s in test]

    # photos whose label the ImageNet classifier contradicts, judged on one reference (the bundled model's
    # fp32 features) whatever the model and backend measured, so every run flags the same photos
    from wildwatch.inference.export import photo_batch

    ref = Predictor.from_file(None, backend="onnx")
    head = ref.open_set[0]
    q = np.concatenate([head(ref.forward(photo_batch(ref.transform(), args.data, test[i:i + 64]))[1])
                        for i in range(0, len(test), 64)])
    contra = contradicted(q, np.array([pred.classes.index(l) for l in labels]), pred.classes)
    audit = set()
    if args.exclude is not None:
        with open(args.exclude) as f:
            audit = {row["path"] for row in csv.DictReader(f)}
    flagged = np.array([bool(c) or s.relpath in audit for c, s in zip(contra, test)])

    species = lambda p: p.top_k[0]["species"] if p.top_k else ""  # noqa: E731  the head's answer before unknown
    res = {"model": str(pred.model_path), "backend": pred.backend, "robust": args.robust, "test_photos": len(test),
           "test_flagged": int(flagged.sum()), "test_contradicted_by_imagenet": int(contra.sum())}
    res["test_top1_all"] = round(float(np.mean([species(p) == l for p, l in zip(test_preds, labels)])), 4)
    res["test_top1_unflagged"] = round(float(np.mean([species(p) == l for p, l, f in zip(test_preds, labels, flagged)
                                                      if not f])), 4)
    res["test_rejected_all"] = round(float(np.mean([p.unknown for p in test_preds])), 4)
    res["test_rejected_unflagged"] = round(float(np.mean([p.unknown for p, f in zip(test_preds, flagged) if not f])), 4)
    leo = [i for i, l in enumerate(labels) if l == "amur_leopard"]
    res["leopards_called_jaguars_test"] = sum(species(test_preds[i]) == "jaguars" for i in leo)
    res["leopards_called_jaguars_unflagged"] = sum(species(test_preds[i]) == "jaguars" for i in leo if not flagged[i])
    res["leopard_photos"] = [len(leo), int(sum(not flagged[i] for i in leo))]

    files = sorted(str(p.relative_to(args.field)) for p in expand_paths([args.field]))
    by_label = collections.defaultdict(list)
    for f in files:
        by_label[f.split("/")[0]].append(f)
    halves = hash_halves(files)
    field_preds = predict(pred, args.field, files)
    rows, table = [], collections.defaultdict(collections.Counter)
    for f, p in zip(files, field_preds):
        label = f.split("/")[0]
        rows.append({"file": f, "label": label, "half": halves[f],
                     "lookalike": label in LOOKALIKES, "unknown": p.unknown, "species": p.species,
                     "looks_like": p.looks_like, "kind": p.looks_like_kind, "score": p.unknown_score})
        table[label][(p.looks_like or f"({p.looks_like_kind})") if p.unknown else f"named {p.species}"] += 1
    for half in ("all", "dev", "held_out"):
        sel = [r for r in rows if half == "all" or r["half"] == half]
        res[f"field_rejected_{half}"] = round(float(np.mean([r["unknown"] for r in sel])), 4)
        look = [r for r in sel if r["lookalike"]]
        res[f"field_lookalikes_rejected_{half}"] = round(float(np.mean([r["unknown"] for r in look])), 4)
        res[f"field_auroc_{half}"] = round(auroc([p.unknown_score for p in test_preds],
                                                 [r["score"] for r in sel]), 4)
    res["field_photos"], res["field_lookalikes"] = len(rows), sum(r["lookalike"] for r in rows)
    if args.cross_fit:
        res.update(cross_fit(pred, split, args, files, rows, [p.unknown_score for p in test_preds]))
    if args.dev is not None:
        dev_preds = predict(pred, args.dev, sorted(str(p.relative_to(args.dev)) for p in expand_paths([args.dev])))
        res["ood_dev_rejected"] = round(float(np.mean([p.unknown for p in dev_preds])), 4)
        res["ood_dev_auroc"] = round(auroc([p.unknown_score for p in test_preds], [p.unknown_score for p in dev_preds]), 4)
    # the ranger's figure: of the species names given on test + field photos, how many are right
    named = [(p.species == l) for p, l in zip(test_preds, labels) if not p.unknown and not p.error]
    named_field = [False for p in field_preds if not p.unknown and not p.error]
    res["names_right_test_plus_field"] = round(float(np.mean(named + named_field)), 4)
    res["names_given"] = [len(named), len(named_field)]
    # the same on a mix with as many field photos as test photos (each field photo counted len(test)/len(field) times)
    w = len(named) / max(len(rows), 1)
    res["names_right_balanced_mix"] = round(sum(named) / (len(named) + w * len(named_field)), 4)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    with open(args.out / "ood_field.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        wr.writeheader()
        wr.writerows(rows)
    lines = ["| label | photos | called unknown | answers |", "|---|---|---|---|"]
    for label in sorted(by_label):
        n, u = len(by_label[label]), sum(r["unknown"] for r in rows if r["label"] == label)
        answers = ", ".join(f"{k} {v}" for k, v in table[label].most_common())
        lines.append(f"| {label}{' (lookalike)' if label in LOOKALIKES else ''} | {n} | {u} | {answers} |")
    (args.out / "report.md").write_text("\n".join(f"- {k}: {v}" for k, v in res.items()) + "\n\n" + "\n".join(lines) + "\n")
    plot(rows, by_label, args.out / "rejected_per_label.png")
    from wildwatch.reports.html import figures_page

    figures_page("Open-set figures", args.out / "report.html",
                 [("share of ood_field photos called unknown, per label", args.out / "rejected_per_label.png")],
                 [("figures", [{"figure": k, "value": v} for k, v in res.items()]),
                  ("what it named each ood_field label", [{"label": l, "answers": ", ".join(
                      f"{k} {v}" for k, v in table[l].most_common())} for l in sorted(by_label)])])
    for k, v in res.items():
        print(f"{k}: {v}")
    print(f"report: {args.out / 'report.html'}")


def cross_fit(pred, split, args, files: list[str], rows: list[dict], test_scores: list[float]) -> dict:
    """The dev half of ood_field scored by the learned decision refitted on the held-out half (validation
    photos whose label ImageNet does not contradict against the held-out photos), the held-out half by
    the model's own: every photo by a decision that was not fitted on it."""
    from wildwatch.models.open_set import combiner_scores, contradicted, fit_combiner

    if pred.open_set is None or pred.open_set[1].combiner is None:
        raise SystemExit("--cross-fit: this model has no learned open-set decision")
    val = split.part("val")
    lg, ft = raw_outputs(pred, args.data, [s.relpath for s in val])
    known = ~contradicted(pred.open_set[0](ft), np.array([pred.classes.index(s.label) for s in val]), pred.classes)
    x_field = pred.combiner_inputs(*raw_outputs(pred, args.field, files))
    half = np.array([r["half"] for r in rows])
    refit = fit_combiner(pred.combiner_inputs(lg[known], ft[known]), x_field[half == "held_out"])
    swapped = combiner_scores(x_field, refit["openset_combiner"], float(refit["openset_combiner_threshold"][0]))
    scores = np.where(half == "dev", swapped, [r["score"] for r in rows])
    unknown = scores > 1
    look = np.array([r["lookalike"] for r in rows])
    return {"field_rejected_crossfit": round(float(unknown.mean()), 4),
            "field_lookalikes_rejected_crossfit": round(float(unknown[look].mean()), 4),
            "field_auroc_crossfit": round(auroc(test_scores, list(scores)), 4),
            "field_dev_half_rejected_by_refit": round(float(unknown[half == "dev"].mean()), 4)}


def plot(rows: list[dict], by_label: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted(by_label, key=lambda l: (l not in LOOKALIKES, l))
    share = [np.mean([r["unknown"] for r in rows if r["label"] == l]) for l in labels]
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.bar(range(len(labels)), share, color=["#b55" if l in LOOKALIKES else "#58a" for l in labels])
    ax.set_xticks(range(len(labels)), labels, rotation=70, fontsize=8)
    ax.set_ylabel("called unknown")
    ax.set_ylim(0, 1)
    ax.set_title("ood_field: lookalikes (red) and other photos (blue)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
