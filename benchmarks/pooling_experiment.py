"""Does fuzzy pooling help on low-quality photos? The seed CNN with max, average, type-2 fuzzy and
type-1 fuzzy pooling, 3 seeds each, everything else identical; resumable, one run at a time.

    python benchmarks/pack_dataset.py ../shared/data/endangered11 .devdata/endangered11_80.npz --size 80 --quality 90
    python benchmarks/pooling_experiment.py --pack .devdata/endangered11_80.npz --image-size 48 --epochs 4 \
        --step-size 2 --out runs/pooling_48 [--max-runs 4]

Each of the 12 runs (pooling x seed) trains seed_m4_gap on the same leak-free split (the pack's),
with the same augmentation (random resized crop, flip, brightness/contrast, seeded per run seed),
Adam (lr 1e-3), StepLR (step 2 epochs here, factor 0.5), batch size and epochs; the best epoch on
validation accuracy is kept. Its state is saved after every epoch, so a stopped run resumes where
it was; a finished run is never redone (``--max-runs`` does a few at a time). The test split is
scored clean and degraded: Gaussian blur, Gaussian noise, JPEG q10, 4x downscale (as
``seed_experiment.py``), and the robustness benchmark's CCTV conditions at severity 3 (low
resolution, night/IR, heavy JPEG, motion blur). When all 12 are done it writes ``summary.json``,
``summary.md`` (mean ± std over seeds, and per seed each pooling minus max pooling) and
``summary.png``.

On a GPU, the same experiment at 112 px and 30 epochs: ``benchmarks/gpu_pooling.sh``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from seed_experiment import MEAN, STD, accuracy, augment, eval_view, load_pack, low_quality_views

from wildwatch.models import create_model

POOLS = ("max", "avg", "fuzzy", "fuzzy1")
SEEDS = (0, 1, 2)
CCTV_SEVERITY = 3


def cctv_views(test01: torch.Tensor) -> dict[str, torch.Tensor]:
    """The robustness benchmark's CCTV conditions (severity 3) on the test crops."""
    from wildwatch.robustness import corruptions as C

    u8 = (test01.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = {}
    for name in C.CCTV:
        arr = np.stack([C.apply(name, x, CCTV_SEVERITY, C.item_rng(0, name, CCTV_SEVERITY, i)) for i, x in enumerate(u8)])
        out[f"cctv_{name}"] = torch.from_numpy(arr).permute(0, 3, 1, 2).float().to(test01.device) / 255
    return out


def run_one(a, pool: str, seed: int, data, out: Path) -> dict:
    """One run, resumable from its state file; the result JSON when it ends."""
    x, y, part, classes = data
    dev = torch.device(a.device)
    tr, va, te = (np.nonzero(part == i)[0] for i in range(3))
    x_train, y_train = x[tr].to(dev), y[tr]
    val01, test01 = eval_view(x[va].to(dev), a.image_size), eval_view(x[te].to(dev), a.image_size)
    torch.manual_seed(seed)
    model = create_model("seed_m4_gap", len(classes), image_size=a.image_size, pool=pool).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    step = torch.compile(model) if a.compile else model  # the same function, its steps fused
    sched = torch.optim.lr_scheduler.StepLR(opt, a.step_size, 0.5)
    g = torch.Generator().manual_seed(seed)
    state_path = out / f"{pool}_s{seed}.state.pt"
    start, best, best_state, history, train_time, train_imgs = 0, -1.0, None, [], 0.0, 0
    if state_path.exists():
        st = torch.load(state_path, weights_only=True)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["gen"])
        start, best, best_state, history = st["epoch"] + 1, st["best"], st["best_state"], st["history"]
        train_time, train_imgs = st["train_time"], st["train_imgs"]
    for epoch in range(start, a.epochs):
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(tr), generator=g)
        for b in range(len(perm) // a.batch_size):
            idx = perm[b * a.batch_size:(b + 1) * a.batch_size]
            loss = F.cross_entropy(step(augment(x_train[idx.to(dev)], a.image_size, g)), y_train[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        train_time += time.perf_counter() - t0
        train_imgs += len(perm) // a.batch_size * a.batch_size
        sched.step()
        va_acc = accuracy(model, val01, y[va], dev)
        history.append({"epoch": epoch + 1, "loss": round(loss.item(), 4), "val_acc": round(va_acc, 4),
                        "seconds": round(time.perf_counter() - t0, 1)})
        if va_acc > best:
            best, best_state = va_acc, {k: v.detach().clone() for k, v in model.state_dict().items()}
        tmp = state_path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "gen": g.get_state(), "epoch": epoch, "best": best, "best_state": best_state, "history": history,
                    "train_time": train_time, "train_imgs": train_imgs}, tmp)
        tmp.replace(state_path)
        print(f"{pool} seed {seed} epoch {epoch + 1}/{a.epochs}: val {va_acc:.4f} ({history[-1]['seconds']} s)",
              flush=True)
    model.load_state_dict(best_state)
    views = {**low_quality_views(test01, a.image_size), **cctv_views(test01)}
    accs = {k: round(accuracy(model, v, y[te], dev), 5) for k, v in views.items()}
    model.eval()
    xb = (test01[:256] - MEAN.to(dev)) / STD.to(dev)
    with torch.no_grad():
        model(xb)
        t0 = time.perf_counter()
        model(xb)
        infer = len(xb) / (time.perf_counter() - t0)
    result = {"pool": pool, "seed": seed, "image_size": a.image_size, "epochs": a.epochs, "batch_size": a.batch_size,
              "lr": a.lr, "step_size": a.step_size, "best_val_acc": round(best, 5), "test": accs,
              "train_img_per_s": round(train_imgs / max(train_time, 1e-9), 1), "infer_img_per_s": round(infer, 1),
              "device": a.device, "threads": torch.get_num_threads(), "compiled": a.compile,
              "n": {"train": len(tr), "val": len(va), "test": len(te)}, "history": history}
    (out / f"{pool}_s{seed}.json").write_text(json.dumps(result, indent=1))
    state_path.unlink(missing_ok=True)
    return result


def summarise(out: Path, results: list[dict]) -> dict:
    conds = list(results[0]["test"])
    by = {p: [r for r in results if r["pool"] == p] for p in POOLS}
    table = {p: {c: (round(100 * statistics.mean(r["test"][c] for r in rs), 2),
                     round(100 * statistics.stdev(r["test"][c] for r in rs), 2) if len(rs) > 1 else 0.0)
                 for c in conds} for p, rs in by.items()}
    paired = {}
    for p in POOLS[1:]:
        diffs = {c: [100 * (next(r for r in by[p] if r["seed"] == s)["test"][c]
                            - next(r for r in by["max"] if r["seed"] == s)["test"][c]) for s in SEEDS] for c in conds}
        paired[p] = {c: {"per_seed": [round(d, 2) for d in v], "mean": round(statistics.mean(v), 2),
                         "wins": sum(d > 0 for d in v)} for c, v in diffs.items()}
    degraded = [c for c in conds if c != "clean"]
    cost = {p: {"train_img_per_s": round(statistics.mean(r["train_img_per_s"] for r in rs), 1),
                "infer_img_per_s": round(statistics.mean(r["infer_img_per_s"] for r in rs), 1)} for p, rs in by.items()}
    summary = {"settings": {k: results[0][k] for k in ("image_size", "epochs", "batch_size", "lr", "step_size",
                                                        "device", "threads", "n")},
               "accuracy_pct_mean_std": table, "paired_vs_max_points": paired, "cost": cost,
               "mean_degraded_pct": {p: round(statistics.mean(table[p][c][0] for c in degraded), 2) for p in POOLS}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = [(f"seed_m4_gap, {summary['settings']['image_size']} px, {summary['settings']['epochs']} epochs, "
             f"batch {summary['settings']['batch_size']}, 3 seeds; test accuracy %, mean ± std"), "",
             "| pooling | " + " | ".join(conds) + " | mean degraded | train img/s | infer img/s |",
             "|---" * (len(conds) + 4) + "|"]
    for p in POOLS:
        lines.append(f"| {p} | " + " | ".join(f"{m:.1f} ± {s:.1f}" for m, s in table[p].values())
                     + f" | {summary['mean_degraded_pct'][p]:.1f} | {cost[p]['train_img_per_s']} | "
                     f"{cost[p]['infer_img_per_s']} |")
    lines += ["", "Each pooling minus max pooling, points, per seed (0, 1, 2):", "",
              "| pooling | " + " | ".join(conds) + " |", "|---" * (len(conds) + 1) + "|"]
    for p in POOLS[1:]:
        lines.append(f"| {p} | " + " | ".join(f"{v['mean']:+.1f} ({', '.join(f'{d:+.1f}' for d in v['per_seed'])})"
                                             for v in paired[p].values()) + " |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    _plot(out, table, conds)
    return summary


def _plot(out: Path, table: dict, conds: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    w = 0.2
    for i, p in enumerate(POOLS):
        means = [table[p][c][0] for c in conds]
        stds = [table[p][c][1] for c in conds]
        ax.bar(np.arange(len(conds)) + (i - 1.5) * w, means, w, yerr=stds, label=p, capsize=2)
    ax.set_xticks(np.arange(len(conds)), conds, rotation=30, ha="right")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("seed_m4_gap: pooling on clean and degraded test photos (mean ± std, 3 seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pack", type=Path, required=True)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--step-size", type=int, default=2)
    ap.add_argument("--max-runs", type=int, default=12, help="runs to do in this call (the rest later)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="train through torch.compile (same results, faster)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    a.out.mkdir(parents=True, exist_ok=True)
    from wildwatch.models import fuzzy_native

    fuzzy_native.available()  # the fuzzy layers' C++ loop is built (or loaded) here, not in a run's timed epoch
    side = max(a.image_size + a.image_size // 7, round(a.image_size / 0.875))
    data = load_pack(a.pack, side)
    done = 0
    for seed in SEEDS:  # seed-major: the first calls give every pooling a run
        for pool in POOLS:
            if (a.out / f"{pool}_s{seed}.json").exists() or done >= a.max_runs:
                continue
            run_one(a, pool, seed, data, a.out)
            done += 1
    results = [json.loads(f.read_text()) for f in sorted(a.out.glob("*_s[0-9].json"))]
    if len(results) == len(POOLS) * len(SEEDS):
        summary = summarise(a.out, results)
        print((a.out / "summary.md").read_text())
        print(json.dumps(summary["mean_degraded_pct"]))
    else:
        print(f"{len(results)} of {len(POOLS) * len(SEEDS)} runs done; run again to go on")


if __name__ == "__main__":
    main()
