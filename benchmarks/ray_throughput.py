"""`wildwatch classify` on Ray Data against the local path, on the same photos.

    python benchmarks/ray_throughput.py ../shared/data/endangered11 --files 1000

Both runs include their start-up (the Ray run starts a local Ray). On a 2-core machine Ray
cannot add cores, so expect no gain; the point is that the rows are the same.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wildwatch.data.discover import expand_paths

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def run(folder: Path, out: Path, *extra: str) -> float:
    start = time.perf_counter()
    subprocess.run([WILDWATCH, "classify", str(folder), "--output", str(out), "-q", *extra], check=True,
                   capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--files", type=int, default=1000)
    args = ap.parse_args()
    files = list(expand_paths([args.data]))
    files = files[:: max(1, len(files) // args.files)][: args.files]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d) / "photos"
        folder.mkdir()
        for i, p in enumerate(files):
            os.symlink(p.resolve(), folder / f"{i:06d}.jpg")
        local_s = run(folder, Path(d) / "local.csv")
        ray_s = run(folder, Path(d) / "ray.csv", "--engine", "ray")
        with open(Path(d) / "local.csv") as fa, open(Path(d) / "ray.csv") as fb:
            a, b = list(csv.DictReader(fa)), list(csv.DictReader(fb))
        same = sum(x["species"] == y["species"] and x["source"] == y["source"] for x, y in zip(a, b))
    print(f"{len(files)} photos, {os.cpu_count()} cores")
    print(f"local: {len(files) / local_s:.1f} img/s ({local_s:.1f} s)   ray: {len(files) / ray_s:.1f} img/s ({ray_s:.1f} s)"
          f"   ray/local {local_s / ray_s:.2f}x   same species on {same}/{len(files)} rows")


if __name__ == "__main__":
    main()
