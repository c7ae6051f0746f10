"""Audit an image folder: counts, unreadable files, exact and near duplicates, size shortcuts."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from wildwatch.data.discover import discover_images
from wildwatch.data.loading import ImageLoadError, load_image
from wildwatch.data.splits import perceptual_groups


def audit_folder(root: str | Path, progress: bool = True) -> dict:
    """Everything that can go wrong with a training folder, as plain data.

    ``size_shortcut`` lists pixel sizes that occur in one class far more than elsewhere: a model
    can learn such a size instead of the animal (in endangered11, five classes are all 256x256).
    """
    root = Path(root)
    samples, classes = discover_images(root)
    counts = Counter(s.label for s in samples)
    unreadable, by_hash = [], defaultdict(list)
    sizes_per_class: dict[str, Counter] = defaultdict(Counter)
    readable = []
    for s in tqdm(samples, desc="reading", unit="img", disable=not progress):
        path = root / s.relpath
        try:
            load_image(path, draft_size=(64, 64))
            with Image.open(path) as im:
                sizes_per_class[s.label][im.size] += 1
        except ImageLoadError as exc:
            unreadable.append({"path": s.relpath, "error": exc.reason})
            continue
        readable.append(s)
        by_hash[hashlib.sha256(path.read_bytes()).hexdigest()].append(s)
    exact = [[s.relpath for s in group] for group in by_hash.values() if len(group) > 1]
    cross_class = [g for g in by_hash.values() if len({s.label for s in g}) > 1]
    groups = perceptual_groups(root, readable, progress=progress)
    members = defaultdict(list)
    for s, g in zip(readable, groups):
        members[g].append(s.relpath)
    near = [m for m in members.values() if len(m) > 1]
    return {
        "root": str(root),
        "classes": classes,
        "counts": {c: counts[c] for c in classes},
        "total": len(samples),
        "unreadable": unreadable,
        "exact_duplicate_groups": exact,
        "exact_duplicates_across_classes": [[f"{s.label}/{Path(s.relpath).name}" for s in g] for g in cross_class],
        "near_duplicate_groups": len(near),
        "near_duplicate_files": sum(len(m) for m in near),
        "near_duplicate_examples": near[:10],
        "size_shortcut": size_shortcuts(sizes_per_class, counts),
    }


def size_shortcuts(sizes_per_class: dict[str, Counter], counts: Counter) -> list[dict]:
    """Exact pixel sizes that give the class away.

    A size is a shortcut when it holds at least 90% of some classes' images, those classes are not
    all the classes, and they own at least 80% of the images of that size: seeing the size then
    narrows the answer to those classes without looking at the animal.
    """
    total_by_size: Counter = Counter()
    for c in sizes_per_class.values():
        total_by_size.update(c)
    n_classes = len(counts)
    out = []
    for size, total in total_by_size.items():
        if total < 10:
            continue
        owners = [lab for lab, c in sizes_per_class.items() if c[size] >= 0.9 * counts[lab]]
        owned = sum(sizes_per_class[lab][size] for lab in owners)
        if owners and len(owners) < n_classes and owned >= 0.8 * total:
            out.append({"size": f"{size[0]}x{size[1]}", "classes": sorted(owners), "images": total,
                        "share_in_those_classes": round(owned / total, 3)})
    return out


def format_audit(report: dict) -> str:
    lines = [f"{report['root']}: {report['total']} images in {len(report['classes'])} classes"]
    for c, n in report["counts"].items():
        lines.append(f"  {c:<24}{n:>6}")
    lines.append(f"unreadable files: {len(report['unreadable'])}")
    for u in report["unreadable"][:20]:
        lines.append(f"  {u['path']}: {u['error']}")
    lines.append(f"exact duplicate groups: {len(report['exact_duplicate_groups'])} "
                 f"({len(report['exact_duplicates_across_classes'])} across classes)")
    lines.append(f"near-duplicate groups: {report['near_duplicate_groups']} ({report['near_duplicate_files']} files)")
    for sc in report["size_shortcut"]:
        lines.append(f"WARNING: image size predicts the class: {sc['share_in_those_classes']:.0%} of the "
                     f"{sc['images']} images of {sc['size']} are in {', '.join(sc['classes'])}, which are (nearly) all "
                     "that size. Resize and crop every image the same way and check accuracy per class and per "
                     "source size (wildwatch evaluate does).")
    return "\n".join(lines)
