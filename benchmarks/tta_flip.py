"""Does test-time augmentation pay? Horizontal-flip TTA (mean of the logits of the photo and its
mirror) against a single pass, clean and under a few corruptions, on the robustness subset.

    python benchmarks/tta_flip.py ../shared/data/endangered11 [--model M] [--limit-per-class 40]

Prints accuracy without and with TTA per condition, and the means. TTA doubles the model's cost.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from wildwatch.data.splits import split_for_model
from wildwatch.inference.predictor import Predictor
from wildwatch.models.bundle import load_bundle
from wildwatch.robustness import corruptions as C
from wildwatch.robustness.benchmark import eval_crop, stratified_subset

CELLS = [("clean", 0), ("gaussian_noise", 3), ("defocus_blur", 3), ("motion_blur", 2), ("snow", 3), ("contrast", 3),
         ("pixelate", 3), ("jpeg_compression", 3), ("low_resolution", 3), ("night_ir", 3), ("glass_blur", 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--limit-per-class", type=int, default=40)
    args = ap.parse_args()
    path = load_bundle(args.model).model_file
    p = Predictor.from_file(path)
    split, _ = split_for_model(path, p.meta, args.data)
    samples = stratified_subset(split.part("test"), args.limit_per_class, 0)
    y = np.array([p.classes.index(s.label) for s in samples])
    pre = p.preprocess
    crops = [eval_crop(args.data / s.relpath, pre) for s in samples]
    def logits(arr: np.ndarray) -> np.ndarray:
        return np.concatenate([p.outputs(arr[i:i + 32])[0] for i in range(0, len(arr), 32)])

    rows = []
    for cond, sev in CELLS:
        arr = np.stack([C.apply(cond, x, sev, C.item_rng(0, cond, sev, i)) for i, x in enumerate(crops)])
        a, b = logits(arr), logits(arr[:, :, ::-1].copy())
        rows.append(((a.argmax(1) == y).mean(), ((a + b).argmax(1) == y).mean()))
        print(f"{cond:>18} {sev}  single {rows[-1][0]:.4f}  flip-TTA {rows[-1][1]:.4f}", flush=True)
    d = np.array(rows[1:])
    print(f"{'corrupted mean':>20}  single {d[:, 0].mean():.4f}  flip-TTA {d[:, 1].mean():.4f}")


if __name__ == "__main__":
    main()
