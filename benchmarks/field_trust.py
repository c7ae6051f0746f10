"""Field trust: are the species names wildwatch gives right often enough to act on without looking twice?

Measured on material from other sources than the training photos (read each set's SOURCE.md):
- ``field_dev`` (photos of the 11 species, labels by eye) beside ``ood_field`` (photos of none of them);
  each is split in two halves per label folder by a hash of the file name (``data.splits.hash_halves``).
  The bundled model's decision is fitted on the dev halves, so the held-out halves are the honest
  figure; the dev halves are scored by the same decision refitted on the held-out halves (the library's
  ``fit_decision`` on this model's outputs: the decision is swappable), so every photo also gets an
  answer from a decision not fitted on it ("cross-fitted").
- ``camtrap_dev``: boxes of MegaDetector's reference output, cut from the full-resolution photos as
  ``classify --detections`` cuts them, labelled by eye.
- the training data's own test split (optimistic: it shares the training scrape's sources).

Figures: precision of species names on a 50/50 mix (the two sets weighed equally), photos of the 11
named right / rejected / uncertain, leopards called jaguars, lookalikes and all of ood_field given no
species name, ECE of the named answers on the mix (and a reliability diagram), the confusion matrix on
field_dev (PNG), camera-trap boxes: other animals given one of the 11 names, the 11 named right per
class. The network's outputs per set are cached in --out (by model digest and backend), so an
interrupted run resumes and the decision can be refitted without running the network again.
``--rows`` scores the CSV rows of ``wildwatch classify`` instead (an earlier release, say).

    .venv/bin/python benchmarks/field_trust.py --out runs/field_trust
"""

from __future__ import annotations

import argparse
import collections
import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

LOOKALIKES = {"asian_elephant", "tiger", "red_panda", "polar_bear", "snow_leopard", "clouded_leopard", "ocelot",
              "serval", "puma", "gorilla", "hippo", "walrus", "bear"}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def photo_items(root: Path) -> list[tuple[str, str, Path]]:
    """(id, label folder, path) of every photo under a folder of label folders."""
    from wildwatch.data.discover import discover_images

    samples, _ = discover_images(root)
    return [(s.relpath, s.label, root / s.relpath) for s in samples]


def camtrap_items(root: Path) -> list[tuple[str, str, object]]:
    """(id, label, loader) of every reference box at confidence >= 0.1, cut from the full-resolution photo."""
    from wildwatch.inference.megadetector import square_crop_box

    items = []
    with open(root / "labels.csv", newline="") as f:
        for r in csv.DictReader(f):
            if not r["bbox"] or float(r["md_conf"] or 0) < 0.1:
                continue
            bbox = [float(v) for v in r["bbox"].split()]

            def load(file=r["file"], bbox=bbox) -> Image.Image:
                with Image.open(root / file) as im:
                    rgb = im.convert("RGB")
                return rgb.crop(square_crop_box(bbox, *rgb.size))

            items.append((f"{r['file']}#{r['box']} ({r['label']})", r["in_11"], load))
    return items


def network_outputs(pred, items, cache: Path, desc: str, degrade=None):
    """The network's outputs for the items (cached in ``cache``, an .npz); ``degrade`` (uint8 HWC crop,
    its index → crop) changes each crop first."""
    from wildwatch.models.decision import Outputs

    if cache.exists():
        d = np.load(cache, allow_pickle=False)
        return Outputs(d["logits"], d.get("unknown"), d.get("imagenet"))
    parts = []
    for i in tqdm(range(0, len(items), 32), desc=desc, unit="batch"):
        imgs = [src() if callable(src) else pred.read(src)[0] for _, _, src in items[i:i + 32]]
        pixels = pred.pixels(imgs)
        if degrade is not None:
            pixels = np.stack([degrade(a, i + k) for k, a in enumerate(pixels)])
        parts.append(pred.outputs(pixels))
    out = Outputs(*(None if parts[0][k] is None else np.concatenate([p[k] for p in parts]) for k in range(3)))
    tmp = cache.with_suffix(".tmp.npz")
    np.savez(tmp, **{k: v for k, v in out._asdict().items() if v is not None})
    tmp.replace(cache)
    return out


def answers(pred, decision, out) -> list[dict]:
    """Per photo: what wildwatch answers with ``decision`` (the kind, the species, the confidence)."""
    verdicts = decision.decide(out)
    return [{"kind": v.kind, "species": pred.classes[v.top] if v.kind == "species" else v.kind,
             "confidence": v.confidence, "candidates": [pred.classes[j] for j in v.candidates],
             "looks_like": v.looks_like} for v in verdicts]


def trust_table(known: list[dict], labels: list[str], other: list[dict], other_labels: list[str]) -> dict:
    """The figures of one mix of photos of the species (``known``) and of other things."""
    named_k = np.array([a["kind"] == "species" for a in known])
    right = np.array([a["species"] == y for a, y in zip(known, labels)])
    named_o = np.array([a["kind"] == "species" for a in other])
    leo = [a for a, y in zip(known, labels) if y == "amur_leopard"]
    look = [a for a, y in zip(other, other_labels) if y in LOOKALIKES]
    ece, table = mixed_ece(known, labels, other)
    return {
        "photos_of_the_11": len(known), "photos_of_other_things": len(other),
        "precision_50_50": float(right.mean() / max(named_k.mean() + named_o.mean(), 1e-9)),
        "named_right": float(right.mean()), "named_wrong": float((named_k & ~right).mean()),
        "rejected": float(np.mean([a["kind"] == "unknown" for a in known])),
        "uncertain": float(np.mean([a["kind"] == "uncertain" for a in known])),
        "leopards_called_jaguars": float(np.mean([a["species"] == "jaguars" for a in leo])) if leo else None,
        "leopards": len(leo),
        "lookalikes_not_named": float(np.mean([a["kind"] != "species" for a in look])) if look else None,
        "lookalikes_rejected": float(np.mean([a["kind"] == "unknown" for a in look])) if look else None,
        "lookalikes": len(look),
        "other_not_named": float(1 - named_o.mean()),
        "other_rejected": float(np.mean([a["kind"] == "unknown" for a in other])),
        "ece_named_50_50": ece, "reliability": table,
    }


def mixed_ece(known: list[dict], labels: list[str], other: list[dict], bins: int = 10) -> tuple[float, dict]:
    """ECE of the named answers on the 50/50 mix: each set weighs as much in all; an other photo named is wrong."""
    conf, right, weight = [], [], []
    for rows, ys, w in ((known, labels, 1 / max(len(known), 1)), (other, [None] * len(other), 1 / max(len(other), 1))):
        for a, y in zip(rows, ys):
            if a["kind"] == "species":
                conf.append(a["confidence"])
                right.append(float(a["species"] == y))
                weight.append(w)
    conf, right, weight = np.array(conf), np.array(right), np.array(weight)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece, table = 0.0, {"bin_lower": [], "bin_upper": [], "count": [], "confidence": [], "accuracy": []}
    for b in range(bins):
        m = which == b
        table["bin_lower"].append(float(edges[b]))
        table["bin_upper"].append(float(edges[b + 1]))
        table["count"].append(int(m.sum()))
        table["confidence"].append(float(np.average(conf[m], weights=weight[m])) if m.any() else float("nan"))
        table["accuracy"].append(float(np.average(right[m], weights=weight[m])) if m.any() else float("nan"))
        if m.any():
            ece += weight[m].sum() / weight.sum() * abs(table["confidence"][-1] - table["accuracy"][-1])
    return float(ece), table


def camtrap_table(rows: list[dict], labels: list[str], ids: list[str]) -> dict:
    other = [(a, i) for a, y, i in zip(rows, labels, ids) if y == "other"]
    per_class = collections.defaultdict(lambda: [0, 0])
    for a, y in zip(rows, labels):
        if y != "other":
            per_class[y][0] += a["species"] == y
            per_class[y][1] += 1
    return {"other_boxes": len(other),
            "other_named": float(np.mean([a["kind"] == "species" for a, _ in other])) if other else None,
            "other_named_as": {i: a["species"] for a, i in other if a["kind"] == "species"},
            "of_the_11_named_right": {c: f"{r} of {n}" for c, (r, n) in sorted(per_class.items())}}


def halves_of(ids: list[str]) -> np.ndarray:
    from wildwatch.data.splits import hash_halves

    h = hash_halves(ids)
    return np.array([h[i] for i in ids])


def pick(seq, mask) -> list:
    return [x for x, m in zip(seq, mask) if m]


def field_figures(pred, outs: dict, items: dict) -> dict:
    """Held-out halves with the model's decision; dev halves with the decision refitted on the held-out halves."""
    from wildwatch.models.decision import Outputs, fit_decision

    kid, kl = [i for i, _, _ in items["field_dev"]], [y for _, y, _ in items["field_dev"]]
    oid, ol = [i for i, _, _ in items["ood_field"]], [y for _, y, _ in items["ood_field"]]
    hk, ho = halves_of(kid), halves_of(oid)
    shipped = pred.active_decision
    ka, oa = answers(pred, shipped, outs["field_dev"]), answers(pred, shipped, outs["ood_field"])

    def sub(o, m):
        return Outputs(*(None if x is None else x[m] for x in o))

    refit = fit_decision(pred.classes, sub(outs["field_dev"], hk == "held_out"),
                         np.array([pred.classes.index(y) for y in pick(kl, hk == "held_out")]),
                         sub(outs["ood_field"], ho == "held_out"), fitted_on="held-out halves")
    refit = type(shipped)(**{**refit.__dict__, "uncertain_below": shipped.uncertain_below,
                             "range_sure": shipped.range_sure})
    ka2, oa2 = answers(pred, refit, outs["field_dev"]), answers(pred, refit, outs["ood_field"])
    cross_k = [a if h == "held_out" else b for a, b, h in zip(ka, ka2, hk)]
    cross_o = [a if h == "held_out" else b for a, b, h in zip(oa, oa2, ho)]
    return {
        "held_out (decision as shipped)": trust_table(pick(ka, hk == "held_out"), pick(kl, hk == "held_out"),
                                                      pick(oa, ho == "held_out"), pick(ol, ho == "held_out")),
        "dev (decision refitted on held_out)": trust_table(pick(ka2, hk == "dev"), pick(kl, hk == "dev"),
                                                           pick(oa2, ho == "dev"), pick(ol, ho == "dev")),
        "all, cross-fitted": trust_table(cross_k, kl, cross_o, ol),
        "all, decision as shipped (dev half was fitted on)": trust_table(ka, kl, oa, ol),
        "_answers": (cross_k, kl, cross_o, ol),
    }


def write_pictures(out: Path, pred, field: dict) -> None:
    from wildwatch.reports.plots import plot_confusion, plot_reliability

    cross_k, kl, cross_o, ol = field.pop("_answers")
    classes = pred.classes
    cols = classes + ["uncertain", "unknown"]
    cm = np.zeros((len(classes), len(cols)), int)
    for a, y in zip(cross_k, kl):
        cm[classes.index(y), cols.index(a["species"])] += 1
    plot_confusion(cm, classes, out / "confusion_field_dev.png", "field_dev, cross-fitted answers", columns=cols)
    t = field["all, cross-fitted"]
    plot_reliability(t["reliability"], out / "reliability_field.png", t["ece_named_50_50"])
    with open(out / "ood_field_answers.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "answer", "looks_like", "count"])
        for (label, ans, seen), n in sorted(collections.Counter((y, a["species"], a["looks_like"])
                                                                for a, y in zip(cross_o, ol)).items()):
            w.writerow([label, ans, seen, n])


def night_figures(pred, items: dict, cache_key: str, out: Path, severity: int = 3) -> dict:
    """The field photos as a night-time infrared camera sees them (grey, dark, noisy: the robustness
    benchmark's night/IR condition): are photos of the 11 named, uncertain or unknown, never confidently
    wrong, and other things still not named?"""
    from wildwatch.robustness.corruptions import night_ir

    def degrade(a: np.ndarray, i: int) -> np.ndarray:
        return night_ir(a, severity, np.random.default_rng(i))

    res = {}
    for name in ("field_dev", "ood_field"):
        o = network_outputs(pred, items[name], out / f"{cache_key}_{name}_night{severity}.npz", f"{name} at night",
                            degrade)
        rows, labels = answers(pred, pred.active_decision, o), [y for _, y, _ in items[name]]
        named = [a for a in rows if a["kind"] == "species"]
        if name == "field_dev":
            wrong = [a for a, y in zip(rows, labels) if a["kind"] == "species" and a["species"] != y]
            res |= {"named_right": float(np.mean([a["species"] == y for a, y in zip(rows, labels)])),
                    "named_wrong": len(wrong) / len(rows),
                    "confidently_wrong (0.8 or more)": sum(a["confidence"] >= 0.8 for a in wrong) / len(rows),
                    "uncertain": float(np.mean([a["kind"] == "uncertain" for a in rows])),
                    "rejected": float(np.mean([a["kind"] == "unknown" for a in rows]))}
        else:
            res["other_named"] = len(named) / len(rows)
    return res


def test_split_figures(pred, args, cache_key: str, out: Path) -> dict:
    from wildwatch.data.splits import split_for_model
    from wildwatch.models.decision import contradicted, softmax

    split, same = split_for_model(pred.model_path, pred.meta, args.data)
    items = [(s.relpath, s.label, args.data / s.relpath) for s in split.part("test")]
    o = network_outputs(pred, items, out / f"{cache_key}_test.npz", "test split")
    rows = answers(pred, pred.active_decision, o)
    labels = [y for _, y, _ in items]
    right = np.array([a["species"] == y for a, y in zip(rows, labels)])
    named = np.array([a["kind"] == "species" for a in rows])
    flagged = np.zeros(len(rows), bool)
    if o.imagenet is not None:
        flagged = contradicted(softmax(o.imagenet), np.array([pred.classes.index(y) for y in labels]), pred.classes)
    return {"photos": len(rows), "data_fingerprint_matches": same,
            "top1_closed_set": float((o.logits.argmax(1) == np.array([pred.classes.index(y) for y in labels])).mean()),
            "named_right": float(right.mean()), "named_wrong": float((named & ~right).mean()),
            "rejected": float(np.mean([a["kind"] == "unknown" for a in rows])),
            "uncertain": float(np.mean([a["kind"] == "uncertain" for a in rows])),
            "precision": float(right.sum() / max(int(named.sum()), 1)),
            "rejected_not_contradicted": float(np.mean([a["kind"] == "unknown" for a, f in zip(rows, flagged) if not f])),
            "leopards_called_jaguars": f"{sum(a['species'] == 'jaguars' for a, y in zip(rows, labels) if y == 'amur_leopard')}"
                                       f" of {labels.count('amur_leopard')}"}


def rows_answers(csv_path: Path, root: Path) -> tuple[list[dict], list[str], list[str]]:
    """(answers, labels, ids) from the rows of ``wildwatch classify --output F.csv`` on a folder of label
    folders (any version): how an earlier release, or another classifier writing the same columns, does."""
    answers_, labels, ids = [], [], []
    with open(csv_path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("error"):
                continue
            rel = Path(r["source"]).resolve().relative_to(root.resolve()).as_posix()
            uncertain, unknown = r.get("uncertain") == "True", r.get("unknown") == "True"
            kind = "unknown" if unknown else "uncertain" if uncertain else "species"
            answers_.append({"kind": kind, "species": r["species"], "looks_like": r.get("looks_like", ""),
                             "confidence": float(r["confidence"]) if r.get("confidence") else None, "candidates": []})
            labels.append(rel.split("/")[0])
            ids.append(rel)
    return answers_, labels, ids


def score_rows(args) -> None:
    """--rows: the figures of classify outputs written by any version (no cross-fitting: answers as given)."""
    given = dict(v.split("=", 1) for v in args.rows)
    k, kl, kid = rows_answers(Path(given["field_dev"]), args.shared / "field_dev")
    o, ol, oid = rows_answers(Path(given["ood_field"]), args.shared / "ood_field")
    hk, ho = halves_of(kid), halves_of(oid)
    tables = {"held_out": trust_table(pick(k, hk == "held_out"), pick(kl, hk == "held_out"),
                                      pick(o, ho == "held_out"), pick(ol, ho == "held_out")),
              "all": trust_table(k, kl, o, ol)}
    out = {"field": tables}
    if "test" in given:
        t, tl, _ = rows_answers(Path(given["test"]), args.data)
        right = np.array([a["species"] == y for a, y in zip(t, tl)])
        named = np.array([a["kind"] == "species" for a in t])
        out["test_split"] = {"photos": len(t), "named_right": float(right.mean()),
                             "named_wrong": float((named & ~right).mean()),
                             "rejected": float(np.mean([a["kind"] == "unknown" for a in t])),
                             "uncertain": float(np.mean([a["kind"] == "uncertain" for a in t])),
                             "leopards_called_jaguars": f"{sum(a['species'] == 'jaguars' for a, y in zip(t, tl) if y == 'amur_leopard')}"
                                                        f" of {tl.count('amur_leopard')}"}
    (args.out / "results_rows.json").write_text(json.dumps(out, indent=2, default=float))
    for name, t in tables.items():
        print(f"\n{name}: " + ", ".join(f"{key} {t[key]:.3f}" for key in (
            "precision_50_50", "named_right", "rejected", "uncertain", "leopards_called_jaguars", "lookalikes_not_named",
            "lookalikes_rejected", "other_not_named", "ece_named_50_50") if t[key] is not None))
    if "test_split" in out:
        print("test split:", json.dumps(out["test_split"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model file or run folder (default: the bundled model)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--robust", action="store_true", help="species from the bundled fine-tuned network")
    ap.add_argument("--shared", type=Path, default=SHARED, help="the folder holding field_dev, ood_field, camtrap_dev")
    ap.add_argument("--data", type=Path, default=SHARED / "endangered11", help="the training data (its test split)")
    ap.add_argument("--out", type=Path, default=Path("runs/field_trust"))
    ap.add_argument("--rows", nargs="+", metavar="SET=CSV", help="score classify outputs instead of running a model: "
                    "field_dev=F.csv ood_field=G.csv [test=H.csv] (photos of the test split in one folder tree)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rows:
        score_rows(args)
        return

    from wildwatch.inference.backends import file_digest
    from wildwatch.inference.predictor import Predictor

    args.out.mkdir(parents=True, exist_ok=True)
    pred = Predictor.from_file(args.model, backend=args.backend, species_model="bundled" if args.robust else None)
    key = f"{file_digest(pred.model_path)}_{pred.backend}"
    items = {"field_dev": photo_items(args.shared / "field_dev"), "ood_field": photo_items(args.shared / "ood_field"),
             "camtrap": camtrap_items(args.shared / "camtrap_dev")}
    outs = {name: network_outputs(pred, it, args.out / f"{key}_{name}.npz", name) for name, it in items.items()}
    field = field_figures(pred, outs, items)
    write_pictures(args.out, pred, field)
    cam = answers(pred, pred.active_decision, outs["camtrap"])
    results = {"model": str(pred.model_path), "backend": pred.backend, "decision": pred.active_decision.to_meta(),
               "field": field,
               "camtrap_boxes": camtrap_table(cam, [y for _, y, _ in items["camtrap"]], [i for i, _, _ in items["camtrap"]]),
               "night_ir": night_figures(pred, items, key, args.out),
               "test_split": test_split_figures(pred, args, key, args.out)}
    (args.out / "results.json").write_text(json.dumps(results, indent=2, default=float))
    print_results(results)


def print_results(r: dict) -> None:
    print(f"model {r['model']} ({r['backend']})")
    keys = ("precision_50_50", "named_right", "named_wrong", "rejected", "uncertain", "leopards_called_jaguars",
            "lookalikes_not_named", "lookalikes_rejected", "other_not_named", "other_rejected", "ece_named_50_50")
    for name, t in r["field"].items():
        print(f"\n{name}: {t['photos_of_the_11']} photos of the 11, {t['photos_of_other_things']} of other things "
              f"({t['leopards']} leopards, {t['lookalikes']} lookalikes)")
        for k in keys:
            print(f"  {k:24s} {t[k]:.3f}" if t[k] is not None else f"  {k:24s} -")
    c = r["camtrap_boxes"]
    print(f"\ncamera-trap boxes: other animals named {c['other_named']:.3f} of {c['other_boxes']} "
          f"{c['other_named_as']}; the 11 named right {c['of_the_11_named_right']}")
    print("\nnight/IR (severity 3) field photos:", json.dumps({k: round(v, 3) for k, v in r["night_ir"].items()}))
    print("\ntest split:", json.dumps(r["test_split"]))


if __name__ == "__main__":
    main()
