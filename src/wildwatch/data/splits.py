"""Train/val/test splits that are stratified by class and never split a near-duplicate group."""

from __future__ import annotations

import csv
import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wildwatch.data.discover import Sample, discover_images, fingerprint
from wildwatch.data.loading import ImageLoadError, load_image
from wildwatch.errors import UnknownNameError, UsageError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class Split:
    """Which file goes where. Saved with every run so evaluation sees the same test set."""

    classes: list[str]
    train: list[Sample] = field(default_factory=list)
    val: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    seed: int = 0
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    grouping: str = ""

    def part(self, name: str) -> list[Sample]:
        if name not in SPLIT_NAMES:
            raise UnknownNameError(f"unknown split {name!r}; choose one of {', '.join(SPLIT_NAMES)}")
        return getattr(self, name)

    def to_json(self) -> dict:
        return {
            "classes": self.classes,
            "seed": self.seed,
            "ratios": list(self.ratios),
            "grouping": self.grouping,
            **{n: [[s.relpath, s.label] for s in self.part(n)] for n in SPLIT_NAMES},
        }

    @classmethod
    def from_json(cls, d: dict) -> Split:
        parts = {n: [Sample(p, lab) for p, lab in d.get(n, [])] for n in SPLIT_NAMES}
        return cls(
            classes=list(d["classes"]),
            seed=int(d.get("seed", 0)),
            ratios=tuple(d.get("ratios", (0.7, 0.1, 0.2))),
            grouping=d.get("grouping", ""),
            **parts,
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Split:
        return cls.from_json(json.loads(Path(path).read_text()))


def _dhash_bits(path: Path, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Difference hash of the image and of its mirror image, as boolean arrays."""
    img = load_image(path, draft_size=(64, 64)).convert("L").resize((size + 1, size), resample=2)
    a = np.asarray(img, dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).ravel()
    mirrored = (a[:, ::-1][:, 1:] > a[:, ::-1][:, :-1]).ravel()
    return bits, mirrored


def perceptual_groups(
    root: str | Path, samples: Sequence[Sample], max_distance: int = 20, progress: bool = True
) -> list[int]:
    """Group near-duplicates within each class by the Hamming distance of 256-bit dHashes.

    Two images are linked when their hashes (or one and the other's mirror image) differ in at
    most ``max_distance`` bits; groups are the connected components. Returns a group id per sample.
    """
    root = Path(root)
    n = len(samples)
    bits = np.zeros((n, 256), dtype=bool)
    mirror = np.zeros((n, 256), dtype=bool)
    ok = np.ones(n, dtype=bool)
    for i, s in enumerate(tqdm(samples, desc="hashing", disable=not progress, unit="img")):
        try:
            bits[i], mirror[i] = _dhash_bits(root / s.relpath)
        except ImageLoadError:
            ok[i] = False
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_class: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        if ok[i]:
            by_class[s.label].append(i)
    for idx in by_class.values():
        b = bits[idx].astype(np.int32)
        m = mirror[idx].astype(np.int32)
        # Hamming distance = bits that differ: count via dot products of 0/1 vectors.
        same = b @ b.T + (1 - b) @ (1 - b).T
        same_m = b @ m.T + (1 - b) @ (1 - m).T
        dist = 256 - np.maximum(same, same_m)
        rows, cols = np.nonzero(np.triu(dist <= max_distance, k=1))
        for r, c in zip(rows, cols):
            parent[find(idx[r])] = find(idx[c])
    return [find(i) for i in range(n)]


def csv_groups(root: str | Path, samples: Sequence[Sample], csv_path: Path) -> list[int]:
    """Groups from a near_duplicates.csv (columns group_id, path, class); others are singletons.

    Paths in the CSV may carry a prefix (``endangered11/lion/1.jpg``); they are matched on their
    trailing ``class/file`` components.
    """
    index = {s.relpath: i for i, s in enumerate(samples)}
    group = list(range(len(samples)))
    offset = len(samples)
    with open(csv_path, newline="") as f:
        for row in csv.DictReader(f):
            parts = Path(row["path"]).parts
            for k in range(len(parts)):
                key = Path(*parts[k:]).as_posix()
                if key in index:
                    group[index[key]] = offset + int(row["group_id"])
                    break
    return group


def assign_groups(root: str | Path, samples: Sequence[Sample], progress: bool = True) -> tuple[list[int], str]:
    """Near-duplicate group per sample, from the folder's near_duplicates.csv or by perceptual hash."""
    csv_path = Path(root) / "near_duplicates.csv"
    if csv_path.exists():
        return csv_groups(root, samples, csv_path), "near_duplicates.csv"
    return perceptual_groups(root, samples, progress=progress), "dhash256<=20"


def split_by_group(
    samples: Sequence[Sample],
    groups: Sequence[int],
    classes: Sequence[str],
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    grouping: str = "",
) -> Split:
    """Split per class by whole groups so that each side gets about its ratio of every class.

    Groups are shuffled with ``seed``; the test side is filled first, then val, the rest is train.
    A group (and every copy in it) lands on exactly one side.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise UsageError(f"ratios must be three non-negative numbers summing to 1, got {ratios}")
    rng = random.Random(seed)
    split = Split(classes=list(classes), seed=seed, ratios=(ratios[0], ratios[1], ratios[2]), grouping=grouping)
    members: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s, g in zip(samples, groups):
        members[(s.label, g)].append(s)
    for cls in classes:
        keys = sorted(k for k in members if k[0] == cls)
        rng.shuffle(keys)
        total = sum(len(members[k]) for k in keys)
        want_test, want_val = ratios[2] * total, ratios[1] * total
        n_test = n_val = 0
        for k in keys:
            group = members[k]
            if n_test + len(group) / 2 <= want_test:
                split.test.extend(group)
                n_test += len(group)
            elif n_val + len(group) / 2 <= want_val:
                split.val.extend(group)
                n_val += len(group)
            else:
                split.train.extend(group)
    for name in SPLIT_NAMES:
        split.part(name).sort(key=lambda s: s.relpath)
    return split


def split_for_model(model_path: Path, meta: dict, data: Path) -> tuple[Split, bool]:
    """The split a model was trained with: its run's split.json, or rebuilt from the metadata.

    Returns (split, fingerprint_matches)."""
    samples, classes = discover_images(data)
    same = meta.get("data_fingerprint") == fingerprint(data, samples)
    folder = model_path if model_path.is_dir() else model_path.parent
    if (folder / "split.json").exists():
        return Split.load(folder / "split.json"), same
    s = meta.get("split") or {}
    groups, how = assign_groups(data, samples, progress=False)
    split = split_by_group(samples, groups, classes, tuple(s.get("ratios", (0.7, 0.1, 0.2))), int(s.get("seed", 0)), how)
    return split, same


def dhash64(img) -> int:
    """A 64-bit difference hash of a decoded image: the same photo re-encoded, resized or
    recompressed stays within a few bits (Hamming distance), a different photo does not."""
    a = np.asarray(img.convert("L").resize((9, 8), resample=2), dtype=np.int16)
    bits = (a[:, 1:] > a[:, :-1]).ravel()
    return int("".join("1" if b else "0" for b in bits), 2)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


HALVES = ("dev", "held_out")


def hash_halves(relpaths: Sequence[str]) -> dict[str, str]:
    """"dev" or "held_out" for each path (relative to its collection's root): within each label folder (the
    path's first part), every other file in the order of the SHA-256 of its path. Stable, and the same
    whichever other files the collection holds in other folders: what one half is fitted on, the other reports."""
    import hashlib

    by_label: dict[str, list[str]] = {}
    for r in relpaths:
        by_label.setdefault(r.split("/")[0], []).append(r)
    out = {}
    for files in by_label.values():
        for i, r in enumerate(sorted(files, key=lambda p: hashlib.sha256(p.encode()).hexdigest())):
            out[r] = HALVES[i % 2]
    return out
