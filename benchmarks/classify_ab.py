"""End-to-end `wildwatch classify` of two checkouts on the same photos, in turns, in one run.

    git worktree add /tmp/before <rev>
    python benchmarks/classify_ab.py /tmp/before/src src ../shared/data/endangered11 --files 2000

Each round runs the command once per checkout (PYTHONPATH set to its ``src``, this environment's
packages), start-up included, on the same ``--files`` photos; the medians over ``--rounds`` and
their ratio are printed (this machine's speed drifts by about 10% over minutes, so the turns
alternate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wildwatch.data.discover import expand_paths

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def run_once(src: Path, photos: Path, out: Path) -> float:
    """Photos per second of one ``wildwatch classify`` run of the checkout at ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src.resolve())}
    start = time.perf_counter()
    subprocess.run([WILDWATCH, "classify", str(photos), "--output", str(out), "-q", "--overwrite"], env=env,
                   check=True, capture_output=True)
    seconds = time.perf_counter() - start
    rows = len(out.read_text(encoding="utf-8").splitlines()) - 1
    return rows / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="the src folder of the first checkout")
    ap.add_argument("after", type=Path, help="the src folder of the second checkout")
    ap.add_argument("data", type=Path, help="a folder of photos")
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    files = sorted(expand_paths([args.data]))[: args.files]
    speeds: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        photos = Path(tmp) / "photos"
        photos.mkdir()
        for i, f in enumerate(files):
            (photos / f"{i:05d}{Path(f).suffix.lower()}").symlink_to(Path(f).resolve())
        for r in range(args.rounds):
            for side in ("before", "after"):
                src = args.before if side == "before" else args.after
                speed = run_once(src, photos, Path(tmp) / f"{side}.csv")
                speeds[side].append(speed)
                print(f"round {r + 1}: {side:6s} {speed:7.1f} photos/s", flush=True)
    before, after = statistics.median(speeds["before"]), statistics.median(speeds["after"])
    print(f"{len(files)} photos, median of {args.rounds} rounds: before {before:.1f}, after {after:.1f} photos/s; "
          f"after/before {after / before:.3f}")


if __name__ == "__main__":
    main()
