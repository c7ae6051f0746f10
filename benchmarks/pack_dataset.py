"""Pack a training folder into one small file (JPEG bytes + labels + the leak-free split) so an
experiment can run on a machine that does not have the folder (e.g. a rented GPU).

    python benchmarks/pack_dataset.py ../shared/data/endangered11 .devdata/endangered11_232.npz --size 232
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wildwatch.data.discover import discover_images
from wildwatch.data.loading import load_image
from wildwatch.data.splits import assign_groups, split_by_group


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", type=int, default=232, help="short side, then centre-cropped square")
    ap.add_argument("--quality", type=int, default=85)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    samples, classes = discover_images(args.data)
    groups, _ = assign_groups(args.data, samples)
    split = split_by_group(samples, groups, classes, (0.7, 0.1, 0.2), seed=args.seed)
    side = {s.relpath: i for i, name in enumerate(("train", "val", "test")) for s in split.part(name)}
    blobs, labels, parts = [], [], []
    for s in tqdm(samples, desc="packing", unit="img"):
        img = load_image(args.data / s.relpath)
        w, h = img.size
        scale = args.size / min(w, h)
        img = img.resize((max(args.size, round(w * scale)), max(args.size, round(h * scale))), Image.BICUBIC)
        w, h = img.size
        left, top = (w - args.size) // 2, (h - args.size) // 2
        img = img.crop((left, top, left + args.size, top + args.size))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=args.quality)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
        labels.append(classes.index(s.label))
        parts.append(side[s.relpath])
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, jpeg=np.concatenate(blobs), offsets=offsets, labels=np.array(labels),
             part=np.array(parts), classes=np.array(classes))
    print(f"{args.out}: {len(samples)} images, {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
