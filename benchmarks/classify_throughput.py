"""How fast `wildwatch classify` is against (a) a naive loop and (b) the model-only limit.

    python benchmarks/classify_throughput.py ../shared/data/endangered11 --files 2000

(a) naive: per image PIL open, torchvision transform, PyTorch forward (on --naive-files photos);
(b) model-only: forward of pre-decoded batches on each backend, the best of several ways to run
    it (one session on all cores with batches of 32 or 4; one single-threaded session per core
    running at once, as classify does), each timed over one pass of --model-images images: the limit;
(c) end to end: the `wildwatch classify` command on the same files, per backend, start-up included
    (start-up alone is timed on one photo);
(b) and (c) are measured in turns, --rounds times per backend, and their medians reported with the
median of each round's c/b (this machine's speed drifts by about 10% over minutes);
then the ratios c/a and c/b, and classify's peak memory at two folder sizes (--memory-files).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from wildwatch.data.discover import expand_paths
from wildwatch.data.loading import load_image
from wildwatch.inference import Predictor, bundled_model_path
from wildwatch.models.bundle import load_bundle

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def naive_loop(files: list[Path], model_path: Path) -> float:
    from wildwatch.data.transforms import eval_transform

    pred = Predictor.from_file(model_path, backend="torch")
    t = eval_transform(pred.preprocess)  # torchvision, as a plain script would do
    model = pred.model  # built before the clock starts
    with torch.no_grad():
        for _ in range(3):
            model(torch.zeros(1, 3, pred.preprocess.image_size, pred.preprocess.image_size))
    start = time.perf_counter()
    with torch.no_grad():
        for f in files:
            from PIL import Image

            img = Image.open(f).convert("RGB")
            model(t(img)[None])
    return len(files) / (time.perf_counter() - start)


def model_only(files: list[Path], model_path: Path, backend: str, images: int) -> tuple[float, str]:
    """(images/s, how) of the fastest way found to run the model alone on pre-decoded batches.

    Each way runs once, without pause, over ``images`` images (256 decoded photos, cycled), after a
    warm-up: a sustained rate, like the command's, not the best of a few short bursts."""
    pred = Predictor.from_file(model_path, backend=backend)
    t = pred.transform()
    arrays = [t.array(load_image(f)) for f in files[:256]]
    cores = os.cpu_count() or 1
    ways = [("one session, all cores", pred.forward, 1)]
    if pred.runner.per_core:
        ways.append((f"{cores} single-threaded runs at once", pred.runner.single_threaded(), cores))
    results = {}
    for name, run, threads in ways:
        for bs in (32, 4):
            batches = [np.stack(arrays[i:i + bs]) for i in range(0, len(arrays), bs)]
            plan = [batches[i % len(batches)] for i in range(-(-images // bs))]
            run(batches[0])

            def part(k: int, plan=plan, threads=threads, run=run) -> None:
                for b in plan[k::threads]:
                    run(b)

            workers = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
            start = time.perf_counter()
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            results[f"{name}, batches of {bs}"] = len(plan) * bs / (time.perf_counter() - start)
    how = max(results, key=results.get)
    return results[how], how


def end_to_end(paths: list[Path], model_path: Path, backend: str, extra: tuple[str, ...] = ()) -> tuple[float, float]:
    """(images/s, peak RSS MB) of the classify command on a folder of links to ``paths``."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "photos"
        folder.mkdir()
        for i, p in enumerate(paths):
            os.symlink(p.resolve(), folder / f"{i:06d}{p.suffix}")
        out = Path(d) / "rows.csv"
        cmd = [WILDWATCH, "classify", str(folder), "--model", str(model_path), "--backend", backend,
               "--output", str(out), "-q", *extra]
        start = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-2000:])
        peak_kb = int(proc.stderr.strip().splitlines()[-1])
        return len(paths) / elapsed, peak_kb / 1024


def in_fresh_process(what: str, data: Path, args) -> tuple[float, str]:
    """Run one in-process measurement in a process of its own, so that no thread pool left over
    from another measurement (PyTorch's, ONNX Runtime's, BLAS's) shares the cores with it."""
    cmd = [sys.executable, __file__, str(data), "--files", str(args.files), "--naive-files", str(args.naive_files),
           "--model-images", str(args.model_images), "--model", str(args.model), "--only", what]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    rate, how = proc.stdout.strip().splitlines()[-1].split("\t")
    return float(rate), how


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--only", help=argparse.SUPPRESS)  # naive or model-only:BACKEND, in a fresh process
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--naive-files", type=int, default=200)
    ap.add_argument("--model-images", type=int, default=1024, help="images per timed pass of (b)")
    ap.add_argument("--model", type=Path, default=bundled_model_path())
    ap.add_argument("--memory-files", type=int, nargs=2, default=(1000, 10000))
    ap.add_argument("--backends", help="comma-separated subset of torch,onnx,onnx-int8 (default: all)")
    ap.add_argument("--rounds", type=int, default=3, help="(b) and (c) measured in turns this many times per backend")
    args = ap.parse_args()
    all_files = list(expand_paths([args.data]))
    files = all_files[:: max(1, len(all_files) // args.files)][: args.files]
    if args.only == "naive":
        print(f"{naive_loop(files[: args.naive_files], args.model)}\tnaive")
        return
    if args.only:
        print("{}\t{}".format(*model_only(files, args.model, args.only.split(":", 1)[1], args.model_images)))
        return
    int8 = load_bundle(args.model).int8
    backends = ["torch", "onnx"] + (["onnx-int8"] if int8 is not None else [])
    if args.backends:
        backends = [b for b in args.backends.split(",") if b in backends]
    print(f"{len(files)} photos from {args.data}; {os.cpu_count()} cores; backends: {', '.join(backends)}")
    a, _ = in_fresh_process("naive", args.data, args)
    print(f"(a) naive loop (PIL + torchvision + PyTorch, one image at a time): {a:.1f} img/s")
    for backend in backends:
        # (b) and (c) in turns, so that a slow spell of the machine weighs on both alike; the
        # medians over the rounds, and the median of each round's own c/b
        bs, cs, ratios, hows, peaks = [], [], [], [], []
        for r in range(args.rounds):
            b, how = in_fresh_process(f"model-only:{backend}", args.data, args)
            c, peak = end_to_end(files, args.model, backend)
            bs.append(b), cs.append(c), ratios.append(c / b), hows.append(how), peaks.append(peak)
            print(f"  [{backend}] round {r + 1}: (b) {b:.1f} img/s ({how}) | (c) {c:.1f} img/s | c/b {c / b:.0%}",
                  flush=True)
        one, _ = end_to_end(files[:1], args.model, backend)
        b, c = float(np.median(bs)), float(np.median(cs))
        how = max(set(hows), key=hows.count)
        print(f"[{backend}] (b) model only {b:.1f} img/s ({how}) | (c) classify end to end {c:.1f} img/s "
              f"(start-up {1 / one:.1f} s) | c/a {c / a:.2f}x | c/b {float(np.median(ratios)):.0%} "
              f"(rounds: {', '.join(f'{x:.0%}' for x in ratios)}) | peak RSS {max(peaks):.0f} MB", flush=True)
    if args.model == bundled_model_path():
        # --robust: the species from the bundled fine-tuned network as well (two networks per photo)
        c, peak = end_to_end(files, args.model, backends[-1], ("--robust",))
        print(f"[{backends[-1]} --robust] (c) classify end to end {c:.1f} img/s | c/a {c / a:.2f}x | "
              f"peak RSS {peak:.0f} MB", flush=True)
    if int8 is not None and int8.report():
        r = int8.report()
        print(f"int8 vs fp32 (from `wildwatch export --int8`): validation {r['val_accuracy_fp32']:.4f} -> "
              f"{r['val_accuracy_int8']:.4f} ({r['int8_val_accuracy_change_points']:+.2f} points), test "
              f"{r['test_accuracy_fp32']:.4f} -> {r['test_accuracy_int8']:.4f} "
              f"({r['int8_test_accuracy_change_points']:+.2f} points), top-1 agreement on test "
              f"{r['int8_top1_agreement_test']:.2%}")
    fast = backends[-1]
    for n in args.memory_files:
        paths = [all_files[i % len(all_files)] for i in range(n)]
        rate, peak = end_to_end(paths, args.model, fast)
        print(f"[{fast}] {n} files: {rate:.1f} img/s, peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
