"""Throughput and peak memory of ``classify`` on 5-12 Mpx camera-trap JPEGs, with and without
``--detect``, in one run, on 2 cores.

    PYTHONPATH=src .venv/bin/python benchmarks/camtrap_throughput.py ../shared/data/camtrap_dev/images --photos 120

The photos: every JPEG under the folder with 5 to 12 million pixels (camtrap_dev has 10: six
2592 x 2000 Snapshot Safari frames, four 3264 x 2448), repeated under new names until there are
``--photos`` of them (hard links in a temporary folder: the same bytes, decoded each time). Each
setting runs ``--rounds`` times in turn, each time in a fresh process pinned to 2 cores (as the
command line runs: model load, folder scan, decode, detector, crops, classifier, CSV rows), and
reports photos per second end to end (start-up included), photos per second once started (from
the first row to the last), photos per second that its CPU time allows on 2 cores (photos / (CPU
seconds / 2): the figure to read on a machine that other work shares), and the process's peak
resident memory. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

CORES = 2


def camera_trap_jpegs(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in (".jpg", ".jpeg"):
            with Image.open(p) as im:
                if 5_000_000 <= im.width * im.height <= 12_000_000:
                    out.append(p)
    return out


def one_run(folder: Path, detect: bool, out: Path) -> dict:
    """In this (fresh) process: classify the folder as the command line does, timed."""
    os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:CORES]))
    os.cpu_count = lambda: CORES  # the thread pools and ONNX Runtime size themselves by it: 2 cores, not the host's
    import resource

    from wildwatch.inference.batch import ClassifyOptions, classify_files

    start = time.perf_counter()
    first = []
    opts = ClassifyOptions(paths=[folder], output=out, detect=detect)
    summary = classify_files(opts, on_prediction=lambda p: first or first.append(time.perf_counter()))
    end = time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    return {"photos": summary.files, "errors": summary.errors, "seconds": end - start,
            "cpu_seconds": cpu, "photos_per_s_from_cpu_time": summary.files / (cpu / CORES),
            "photos_per_s": summary.files / (end - start),
            "photos_per_s_started": (summary.files - 1) / (end - first[0]) if first else 0.0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_child(folder: Path, detect: bool) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, __file__, "--child", str(folder), *(["--detect"] if detect else []),
                               "--out", str(Path(tmp) / "rows.csv")], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folder", type=Path, nargs="?", default=Path("../shared/data/camtrap_dev/images"))
    ap.add_argument("--photos", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--detect", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(one_run(args.folder, args.detect, args.out)))
        return
    photos = camera_trap_jpegs(args.folder)
    if not photos:
        raise SystemExit(f"{args.folder}: no JPEG of 5-12 Mpx")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "card"
        work.mkdir()
        for i in range(args.photos):
            src = photos[i % len(photos)]
            os.link(src, work / f"IMG_{i:05d}{src.suffix}")
        mpx = [Image.open(p).width * Image.open(p).height / 1e6 for p in photos]
        results: dict[str, list] = {"without --detect": [], "with --detect": []}
        for _ in range(args.rounds):
            for name, detect in (("without --detect", False), ("with --detect", True)):
                results[name].append(run_child(work, detect))
    report = {"photos": args.photos, "distinct_photos": len(photos),
              "megapixels": f"{min(mpx):.1f}-{max(mpx):.1f} (mean {statistics.mean(mpx):.1f})", "cores": CORES,
              "rounds": args.rounds}
    for name, runs in results.items():
        report[name] = {k: round(statistics.median(r[k] for r in runs), 2)
                        for k in ("photos_per_s", "photos_per_s_started", "photos_per_s_from_cpu_time", "peak_rss_mb",
                                  "seconds", "cpu_seconds")}
        report[name]["errors"] = max(r["errors"] for r in runs)
    report["detect_cost"] = round(report["without --detect"]["photos_per_s"] / report["with --detect"]["photos_per_s"], 2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
