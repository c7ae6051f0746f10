"""Time the reproduction of the bundled model from raw photos, and compare it with the shipped one.

    python benchmarks/train_time.py ../shared/data/endangered11 --ood ../shared/data/ood_dev
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wildwatch.inference import bundled_model_path
from wildwatch.models.files import read_model_meta

WILDWATCH = str(Path(sys.executable).parent / "wildwatch")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--ood", type=Path)
    ap.add_argument("--keep", type=Path, help="keep the run folder here instead of a temporary one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        out = args.keep or Path(d) / "run"
        cmd = [WILDWATCH, "train", "--model", "effnet_lite0", "--data", str(args.data), "--out", str(out)]
        if args.ood:
            cmd += ["--ood", str(args.ood)]
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        seconds = time.perf_counter() - start
        new = json.loads((out / "train_metrics.json").read_text())
    shipped = read_model_meta(bundled_model_path())["metrics"]
    print(f"reproduced in {seconds:.0f} s on {os.cpu_count()} cores "
          f"(feature caching {new['seconds_caching']:.0f} s)")
    for key in ("val_accuracy", "test_accuracy", "test_nll", "unknown_auroc", "unknown_rejected_known_test"):
        print(f"  {key:<28} reproduced {new.get(key)}   shipped {shipped.get(key)}")


if __name__ == "__main__":
    main()
