"""The built-in detector against MegaDetector's reference boxes on camtrap_dev, and the species per box.

    PYTHONPATH=src .venv/bin/python benchmarks/detector_camtrap.py ../shared/data/camtrap_dev

camtrap_dev (see its SOURCE.md): 37 full-resolution camera-trap photos, MegaDetector v5a's boxes
(md_reference.json) and a label by eye per box at confidence >= 0.1 and per photo (labels.csv).
Evaluation only. Reported per detector input size and threshold:

- image agreement: photos where "the detector found something" (a box at the threshold) agrees
  with the photo's label by eye (animal, person or vehicle vs empty), and with MegaDetector (a
  box of any category at >= 0.2);
- box recall: the reference boxes at >= 0.2 that show something real (by eye), matched one to one
  by a detector box at IoU >= 0.5;
- false boxes on empty frames: detector boxes on the 15 photos empty by eye;
- extra boxes on other frames: detector boxes matching no reference box at >= 0.1.

Then, at the chosen setting (416 px, 0.3), what ``classify --detect`` says per reference box it
found (a species of the 11, unknown with what it looks like, person, vehicle), against the label
by eye (``in_11``): named right, named wrong, not named; and per photo. Last, the crops cut at the
scale ``crops.decode_for_crops`` chooses against crops cut from the full-resolution decode: the
same answer for how many boxes.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from wildwatch.data.loading import load_image, load_photo
from wildwatch.inference.camtrap import DetectPipeline, label_of
from wildwatch.inference.crops import crops, decode_for_crops
from wildwatch.inference.detect import Detector
from wildwatch.inference.predictor import Predictor


def iou(a, b) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / max(a[2] * a[3] + b[2] * b[3] - w * h, 1e-12)


def match(reference: list, found: list, at: float = 0.5) -> dict[int, int]:
    """Reference index -> found index, one to one, greedily by IoU."""
    pairs = sorted(((iou(r, f), i, j) for i, r in enumerate(reference) for j, f in enumerate(found)), reverse=True)
    out, used = {}, set()
    for v, i, j in pairs:
        if v >= at and i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def load(root: Path):
    ref = json.loads((root / "md_reference.json").read_text())
    with open(root / "labels.csv", newline="") as f:
        labels = list(csv.DictReader(f))
    image_label = {r["file"]: r["image_label"] for r in labels}
    real = {}  # file -> [(bbox, label row)] of reference boxes at >= 0.2 that show something by eye
    for r in labels:
        if r["bbox"] and float(r["md_conf"]) >= 0.2 and not r["label"].startswith("no animal"):
            real.setdefault(r["file"], []).append(([float(v) for v in r["bbox"].split()], r))
    return ref, image_label, real


def boxes_at(root: Path, ref: dict, size: int) -> dict:
    """Every detector box down to 0.05 per photo, decoded as ``classify --detect`` decodes."""
    det = Detector(size=size, threshold=0.05)
    out = {}
    for im in ref["images"]:
        img = load_photo(root / im["file"], draft_size=(max(size, 256), max(size, 256)))[0]
        out[im["file"]] = det.detect([img])[0]
    return out


def score(ref: dict, image_label: dict, real: dict, found: dict, threshold: float) -> dict:
    agree_eye = agree_md = matched = total = false_empty = extra = 0
    for im in ref["images"]:
        f = im["file"]
        boxes = [b.bbox for b in found[f] if b.conf >= threshold]
        agree_eye += bool(boxes) == (image_label[f] != "empty")
        agree_md += bool(boxes) == any(d["conf"] >= 0.2 for d in im["detections"])
        reference = [b for b, _ in real.get(f, [])]
        total += len(reference)
        matched += len(match(reference, boxes))
        if image_label[f] == "empty":
            false_empty += len(boxes)
        else:
            any_ref = [d["bbox"] for d in im["detections"] if d["conf"] >= 0.1]
            extra += len(boxes) - len(match(any_ref, boxes, 0.3))
    n = len(ref["images"])
    return {"image_agreement_by_eye": f"{agree_eye}/{n}", "image_agreement_with_megadetector": f"{agree_md}/{n}",
            "box_recall_iou_0.5": f"{matched}/{total} = {matched / total:.2f}",
            "false_boxes_on_15_empty_frames": false_empty, "extra_boxes_on_other_frames": extra}


def species_per_box(root: Path, ref: dict, real: dict, pipe: DetectPipeline, image_label: dict,
                    in_11: dict) -> dict:
    """What classify --detect says for each real reference box its detector found, against the label by
    eye, and per photo: the species it names (right or wrong), and whether it saw something."""
    tally, per_photo = Counter(), Counter()
    for im in ref["images"]:
        p = pipe.predict_file(root / im["file"])
        truth, seen = in_11.get(im["file"], set()), bool(p.detections)
        if not p.unknown:
            per_photo["photo named a species, rightly" if p.species in truth else "photo named a species wrongly"] += 1
        elif truth:
            per_photo["photo of one of the 11 not named"] += 1
        per_photo[f"{image_label[im['file']]} by eye, {'something' if seen else 'nothing'} seen"] += 1
        dets = [d for d in p.detections if not d["whole_photo"]]
        pairs = match([b for b, _ in real.get(im["file"], [])], [d["bbox"] for d in dets])
        for i, (_, row) in enumerate(real.get(im["file"], [])):
            if i not in pairs:
                tally["not found by the detector"] += 1
                continue
            d = dets[pairs[i]]
            truth = row["in_11"]
            if d["species"]:
                tally["named right" if d["species"] == truth else f"named wrong ({truth} as {d['species']})"] += 1
            else:
                seen = d["label"] if d["looks_like_kind"] in ("animal", "person", "vehicle") else (
                    f"unplaced: {d['looks_like_kind'] or 'nothing sure'}")
                tally[f"not named ({seen}{', looks like ' + d['looks_like'] if d['looks_like'] else ''})"
                      + (" but it is one of the 11" if truth != "other" else "")] += 1
    return {"boxes": dict(sorted(tally.items(), key=lambda kv: -kv[1])), "photos": dict(sorted(per_photo.items()))}


def crop_agreement(root: Path, ref: dict, real: dict, predictor: Predictor) -> str:
    """Answers on crops at the chosen decode scale vs crops from the full-resolution decode."""
    same = total = 0
    for im in ref["images"]:
        bboxes = [b for b, _ in real.get(im["file"], [])]
        if not bboxes:
            continue
        full = load_image(root / im["file"])
        chosen = decode_for_crops(root / im["file"], bboxes, predictor.preprocess.image_size)
        a = predictor.predict_images(crops(full, bboxes))
        b = predictor.predict_images(crops(chosen, bboxes))
        same += sum(label_of(x)[0] == label_of(y)[0] for x, y in zip(a, b))
        total += len(bboxes)
    return f"{same}/{total}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, nargs="?", default=Path("../shared/data/camtrap_dev"))
    args = ap.parse_args()
    ref, image_label, real = load(args.root)
    report = {}
    for size in (416, 640):
        found = boxes_at(args.root, ref, size)
        for threshold in (0.2, 0.3, 0.4):
            report[f"{size} px, threshold {threshold}"] = score(ref, image_label, real, found, threshold)
    predictor = Predictor.from_file(None)
    pipe = DetectPipeline(predictor, Detector())
    in_11 = {}
    for boxes in real.values():
        for _, row in boxes:
            if row["in_11"] != "other":
                in_11.setdefault(row["file"], set()).add(row["in_11"])
    report["classify --detect at 416 px, 0.3"] = species_per_box(args.root, ref, real, pipe, image_label, in_11)
    report["same answer on crops at the chosen scale as at full resolution"] = crop_agreement(
        args.root, ref, real, predictor)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
