"""How fast `wildwatch classify` is against (a) a naive loop and (b) the model-only limit.

    python benchmarks/classify_throughput.py ../shared/data/endangered11 --files 2000

(a) naive: per image PIL open, torchvision transform, PyTorch forward (on --naive-files photos);
(b) model-only: forward of pre-decoded batches of 32 on each backend (best of 3);
(c) end to end: the `wildwatch classify` command on the same files, per backend;
then the ratios c/a and c/b, and classify's peak memory at two folder sizes (--memory-files).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from wildwatch.data.discover import expand_paths
from wildwatch.data.loading import load_image
from wildwatch.inference import Predictor, bundled_model_path
from wildwatch.inference.backends import int8_path

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def naive_loop(files: list[Path], model_path: Path) -> float:
    from wildwatch.data.transforms import eval_transform

    pred = Predictor.from_file(model_path, backend="torch")
    t = eval_transform(pred.preprocess)  # torchvision, as a plain script would do
    start = time.perf_counter()
    with torch.no_grad():
        for f in files:
            from PIL import Image

            img = Image.open(f).convert("RGB")
            pred.model(t(img)[None])
    return len(files) / (time.perf_counter() - start)


def model_only(files: list[Path], model_path: Path, backend: str) -> float:
    pred = Predictor.from_file(model_path, backend=backend)
    t = pred.transform()
    batches = [torch.stack([t(load_image(f)) for f in files[i:i + 32]]) for i in range(0, min(len(files), 256), 32)]
    pred.forward(batches[0])
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for b in batches:
            pred.forward(b)
        best = max(best, sum(len(b) for b in batches) / (time.perf_counter() - start))
    return best


def end_to_end(paths: list[Path], model_path: Path, backend: str) -> tuple[float, float]:
    """(images/s, peak RSS MB) of the classify command on a folder of links to ``paths``."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "photos"
        folder.mkdir()
        for i, p in enumerate(paths):
            os.symlink(p.resolve(), folder / f"{i:06d}{p.suffix}")
        out = Path(d) / "rows.csv"
        cmd = [WILDWATCH, "classify", str(folder), "--model", str(model_path), "--backend", backend,
               "--output", str(out), "-q"]
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        peak_kb = int(proc.stderr.strip().splitlines()[-1])
        return len(paths) / elapsed, peak_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--naive-files", type=int, default=200)
    ap.add_argument("--model", type=Path, default=bundled_model_path())
    ap.add_argument("--memory-files", type=int, nargs=2, default=(1000, 10000))
    args = ap.parse_args()
    all_files = list(expand_paths([args.data]))
    files = all_files[:: max(1, len(all_files) // args.files)][: args.files]
    backends = ["torch", "onnx"] + (["onnx-int8"] if int8_path(args.model).exists() else [])
    print(f"{len(files)} photos from {args.data}; {os.cpu_count()} cores; backends: {', '.join(backends)}")
    a = naive_loop(files[: args.naive_files], args.model)
    print(f"(a) naive loop (PIL + torchvision + PyTorch, one image at a time): {a:.1f} img/s")
    for backend in backends:
        b = model_only(files, args.model, backend)
        c, peak = end_to_end(files, args.model, backend)
        print(f"[{backend}] (b) model only {b:.1f} img/s | (c) classify end to end {c:.1f} img/s | "
              f"c/a {c / a:.2f}x | c/b {c / b:.0%} | peak RSS {peak:.0f} MB")
    fast = backends[-1]
    for n in args.memory_files:
        paths = [all_files[i % len(all_files)] for i in range(n)]
        rate, peak = end_to_end(paths, args.model, fast)
        print(f"[{fast}] {n} files: {rate:.1f} img/s, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
