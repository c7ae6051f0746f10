"""Time of the benchmark's CCTV conditions per 224 px photo on one core, through the corruption
library (wildwatch.robustness.ops), against Pillow and OpenCV doing the same work.

    python benchmarks/corruption_speed.py [--photos 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from wildwatch.robustness import corruptions as C
from wildwatch.robustness import ops as O

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "endangered11"


def per_photo_ms(fn, photos) -> float:
    t = time.perf_counter()
    for i, x in enumerate(photos):
        for sev in range(1, 6):
            fn(x, sev, i)
    return (time.perf_counter() - t) / (5 * len(photos)) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--photos", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    paths = sorted(DATA.glob("*/*"))[:: 50][: a.photos]
    photos = [np.asarray(Image.open(p).convert("RGB").resize((224, 224))) for p in paths]

    def pillow_low_res(x, sev, i):
        s = C.LOW_RES_PX[sev - 1] / 224
        small = Image.fromarray(x).resize((round(224 * s), round(224 * s)), Image.BOX)
        return np.asarray(small.resize((224, 224), Image.BICUBIC))

    def opencv_motion(x, sev, i):
        k = O.motion_kernel(C.MOTION_LENGTH[sev - 1], 30.0)
        return cv2.filter2D(x, -1, k, borderType=cv2.BORDER_REFLECT)

    rows = []
    for name in C.CCTV:
        ms = per_photo_ms(lambda x, sev, i, n=name: C.apply(n, x, sev, C.item_rng(0, n, sev, i)), photos)
        rows.append((name, ms))
    rows += [("low_resolution, Pillow alone", per_photo_ms(pillow_low_res, photos)),
             ("motion_blur_any, OpenCV alone", per_photo_ms(opencv_motion, photos))]
    for name, ms in rows:
        print(f"{name:32s} {ms:6.1f} ms per photo")


if __name__ == "__main__":
    main()
