"""Training and inference throughput of seed_m4_gap with each pooling layer, in one run.

    python benchmarks/pooling_speed.py [--image-size 64 --batch-size 32 --steps 30 --threads 2]

Each pooling (max, avg, type-2 fuzzy, type-1 fuzzy, on the C++ loop of
``wildwatch.models.fuzzy_native``, on the 2x2 tensor expressions, and through the general
``unfold`` path they took before the 2x2 closed form) trains the same model on the same random
batches: forward, cross-entropy, backward, Adam step; in eager PyTorch, and compiled with
``torch.compile`` (which fuses the tensor expressions' elementwise steps). Rounds alternate between
poolings so that the machine's drift is shared; the median of the rounds is reported, with each
layer's ratio to max pooling run the same way (goal for the fuzzy layers: at least 0.5).
Writes results.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from wildwatch.models import create_model, fuzzy, fuzzy_native


def _rows_forward(layer):
    """The unfold path of one fuzzy layer: its patches, pooled row by row."""
    def forward(x):
        return layer.rows_fn(fuzzy._patches(x, layer.kernel_size, layer.stride)[0]).reshape(
            *fuzzy._patches(x, layer.kernel_size, layer.stride)[1])

    return forward


def general_path(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its fuzzy layers on the unfold path (as before the closed form)."""
    for m in model.modules():
        if isinstance(m, fuzzy._FuzzyPool):
            m.forward = _rows_forward(m)
    return model


def tensor_path(model: torch.nn.Module) -> torch.nn.Module:
    """The model with its fuzzy layers on the 2x2 tensor expressions instead of the C++ loop."""
    for m in model.modules():
        if isinstance(m, fuzzy._FuzzyPool):
            m.native = False
    return model


def train_rate(model, batches, labels) -> float:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    t0 = time.perf_counter()
    for x, y in zip(batches, labels):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


@torch.no_grad()
def infer_rate(model, batches) -> float:
    model.eval()
    t0 = time.perf_counter()
    for x in batches:
        model(x)
    return sum(len(x) for x in batches) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/pooling_speed"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    s, b = args.image_size, args.batch_size
    batches = [torch.randn(b, 3, s, s, generator=g) for _ in range(args.steps)]
    labels = [torch.randint(0, 11, (b,), generator=g) for _ in range(args.steps)]
    native = fuzzy_native.available()  # built once here, before anything is timed
    layers = {"max": "max", "avg": "avg", "fuzzy": "fuzzy", "fuzzy1": "fuzzy1",
              "fuzzy (tensor path)": "fuzzy", "fuzzy1 (tensor path)": "fuzzy1",
              "fuzzy (unfold path)": "fuzzy", "fuzzy1 (unfold path)": "fuzzy1",
              "max, compiled": "max", "avg, compiled": "avg", "fuzzy, compiled": "fuzzy",
              "fuzzy1, compiled": "fuzzy1"}
    compiled: dict[str, torch.nn.Module] = {}
    train: dict[str, list[float]] = {k: [] for k in layers}
    infer: dict[str, list[float]] = {k: [] for k in layers}
    for _ in range(args.rounds):
        for name, pool in layers.items():
            torch.manual_seed(0)
            model = create_model("seed_m4_gap", 11, image_size=s, pool=pool)
            if "unfold" in name:
                model = general_path(model)
            if "tensor" in name or "compiled" in name:
                model = tensor_path(model)
            if "compiled" in name:  # compiled once, the first round (its time is not counted)
                model = compiled.setdefault(name, torch.compile(model))
            train_rate(model, batches[:3], labels[:3])  # warm-up
            train[name].append(train_rate(model, batches, labels))
            infer[name].append(infer_rate(model, batches))
    results = {"native_kernel": native, "image_size": s, "batch_size": b, "steps": args.steps, "rounds": args.rounds,
               "threads": args.threads,
               "train_img_per_s": {k: round(statistics.median(v), 1) for k, v in train.items()},
               "infer_img_per_s": {k: round(statistics.median(v), 1) for k, v in infer.items()}}
    def base(k, what):  # each layer against max pooling run the same way (eager or compiled)
        return results[what]["max, compiled" if "compiled" in k else "max"]

    results["train_ratio_to_max"] = {k: round(v / base(k, "train_img_per_s"), 3)
                                     for k, v in results["train_img_per_s"].items()}
    results["infer_ratio_to_max"] = {k: round(v / base(k, "infer_img_per_s"), 3)
                                     for k, v in results["infer_img_per_s"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"seed_m4_gap, {s} px, batch {b}, {args.threads} threads; median of {args.rounds} rounds; "
          f"fuzzy layers {'on the C++ loop' if native else 'on the tensor path (no C++ kernel built)'}")
    print(f"{'pooling':<22}{'train img/s':>12}{'ratio':>8}{'infer img/s':>13}{'ratio':>8}")
    for k in layers:
        print(f"{k:<22}{results['train_img_per_s'][k]:>12}{results['train_ratio_to_max'][k]:>8}"
              f"{results['infer_img_per_s'][k]:>13}{results['infer_ratio_to_max'][k]:>8}")


if __name__ == "__main__":
    main()
