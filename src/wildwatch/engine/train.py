"""The training loop: train_one_epoch, evaluate, fit. Explicit and short, resumable."""

from __future__ import annotations

import csv
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from wildwatch.config import TrainConfig
from wildwatch.data.datasets import ImageDataset, make_loader
from wildwatch.data.discover import discover_images, fingerprint
from wildwatch.data.splits import Split, assign_groups, split_by_group
from wildwatch.data.transforms import Preprocess, eval_transform, train_transform
from wildwatch.engine.checkpoint import load_state, save_state
from wildwatch.engine.device import resolve_device
from wildwatch.models import create_model, get_entry
from wildwatch.models.files import MODEL_FILENAME, save_model

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "lr", "val_loss", "val_acc", "seconds")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train_one_epoch(model, loader, optimizer, device, max_batches=None, desc="train", progress=True,
                    sums=False) -> tuple[float, float] | tuple[float, float, int]:
    """One pass over the loader; returns (mean loss, accuracy) on the training batches, or with
    ``sums`` the (loss sum, correct, count) to add up across processes."""
    model.train()
    loss_fn = nn.CrossEntropyLoss()
    total, correct, loss_sum = 0, 0, 0.0
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(loader, total=n_batches, desc=desc, leave=False, unit="batch", disable=not progress)
    for i, (x, y) in enumerate(bar):
        if i >= n_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
        bar.set_postfix(loss=f"{loss_sum / total:.3f}", acc=f"{correct / total:.3f}")
    if sums:
        return loss_sum, correct, total
    return loss_sum / max(total, 1), correct / max(total, 1)


@torch.no_grad()
def predict_logits(model, loader, device, desc="eval") -> tuple[np.ndarray, np.ndarray]:
    """Logits and targets for every sample of the loader, in order."""
    model.eval()
    logits, targets = [], []
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch"):
        logits.append(model(x.to(device)).float().cpu())
        targets.append(y)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(logits).numpy(), torch.cat(targets).numpy()


def evaluate(model, loader, device, dist_info=None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a loader; under DDP each rank passes its own shard and
    the sums are added up across ranks."""
    from wildwatch.engine.distributed import DistInfo, all_reduce_sum

    logits, targets = predict_logits(model, loader, device)
    loss_sum = correct = 0.0
    if len(targets):
        loss_sum = nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(targets),
                                               reduction="sum").item()
        correct = float((logits.argmax(1) == targets).sum())
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, float(len(targets))], dist_info or DistInfo(), device)
    if n == 0:
        return float("nan"), float("nan")
    return loss_sum / n, correct / n


@dataclass
class FitResult:
    out: Path
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    model: nn.Module | None = None


def prepare_split(cfg: TrainConfig, out: Path, progress: bool = True) -> tuple[Split, str]:
    """Load the run's saved split (resume, re-evaluation) or make and save a new one."""
    samples, classes = discover_images(cfg.data)
    fp = fingerprint(cfg.data, samples)
    split_path = out / "split.json"
    if split_path.exists():
        return Split.load(split_path), fp
    groups, how = assign_groups(cfg.data, samples, progress=progress)
    split = split_by_group(samples, groups, classes, ratios=cfg.ratios, seed=cfg.seed, grouping=how)
    split.save(split_path)
    return split, fp


def write_history(path: Path, history: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        extra = [k for k in history[0] if k not in HISTORY_FIELDS] if history else []
        w = csv.DictWriter(f, fieldnames=[*HISTORY_FIELDS, *extra])
        w.writeheader()
        w.writerows(history)


def model_preprocess(name: str, image_size: int) -> Preprocess:
    base = get_entry(name).preprocess
    return Preprocess(image_size=image_size, **base)


def fit(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data``, keeping the best model on validation accuracy.

    The run folder gets config.yaml, split.json, history.csv, curves.png, model.safetensors
    (+ model.json) and state.pt. With ``resume`` an interrupted run continues from state.pt and
    ends with the same weights as an uninterrupted one (every epoch is seeded on its own).
    """
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DistributedSampler, Subset

    from wildwatch.engine.distributed import all_reduce_sum, barrier, cleanup, setup_distributed, shard, sync_buffers
    from wildwatch.reports.html import figures_page
    from wildwatch.reports.plots import plot_curves

    cfg = cfg.resolved()
    out = Path(cfg.out)
    state_path = out / "state.pt"
    if out.exists() and (out / "config.yaml").exists() and not resume:
        raise FileExistsError(f"{out}: a run is already there; pass --resume to continue it or choose another --out")
    if resume and not state_path.exists():
        raise FileNotFoundError(f"{out}: nothing to resume (no state.pt); start without --resume")
    device = resolve_device(cfg.device)
    dist_info = setup_distributed(device)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    main = dist_info.is_main
    progress = progress and main
    if resume:
        saved = TrainConfig.load(out / "config.yaml")
        cfg = saved.model_copy(update={"epochs": cfg.epochs, "workers": cfg.workers, "device": cfg.device})
    barrier(dist_info)  # every rank has checked the folder before the main one writes to it
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        split, data_fp = prepare_split(cfg, out, progress)
    barrier(dist_info)
    if not main:
        split, data_fp = prepare_split(cfg, out, progress=False)  # reads the saved split.json
    pre = model_preprocess(cfg.model, cfg.image_size)
    train_ds = ImageDataset(cfg.data, split.train, split.classes, train_transform(pre))
    val_ds = ImageDataset(cfg.data, split.val, split.classes, eval_transform(pre))
    if dist_info.enabled:
        val_ds = Subset(val_ds, shard(len(val_ds), dist_info))
    val_loader = make_loader(val_ds, cfg.batch_size * 2, shuffle=False, workers=cfg.workers)

    seed_everything(cfg.seed)
    model = create_model(cfg.model, len(split.classes), image_size=cfg.image_size, pool=cfg.pool).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    start, best_acc, best_epoch, history = 0, -1.0, -1, []
    if resume:
        st = load_state(state_path)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        start, best_acc, best_epoch, history = st["epoch"] + 1, st["best_val_acc"], st["best_epoch"], st["history"]
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if dist_info.enabled else model
    sampler = (DistributedSampler(train_ds, dist_info.world_size, dist_info.rank, shuffle=True, seed=cfg.seed,
                                  drop_last=True) if dist_info.enabled else None)

    meta = {
        "architecture": cfg.model,
        "model_kwargs": {"image_size": cfg.image_size, "pool": cfg.pool},
        "classes": split.classes,
        "preprocess": pre.to_json(),
        "temperature": 1.0,
        "data_fingerprint": data_fp,
        "split": {"seed": split.seed, "ratios": list(split.ratios), "grouping": split.grouping,
                  "sizes": {n: len(split.part(n)) for n in ("train", "val", "test")}},
        "processes": dist_info.world_size,
    }
    epochs = tqdm(range(start, cfg.epochs), desc=f"{cfg.model}", unit="epoch", disable=not progress,
                  initial=start, total=cfg.epochs)
    for epoch in epochs:
        t0 = time.perf_counter()
        seed_everything(cfg.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7919 * dist_info.rank)
        if sampler is not None:
            sampler.set_epoch(epoch)
        train_loader = make_loader(train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, generator=gen,
                                   drop_last=sampler is not None or len(train_ds) > cfg.batch_size, sampler=sampler)
        lr = optimizer.param_groups[0]["lr"]
        sums = train_one_epoch(net, train_loader, optimizer, device, cfg.max_train_batches,
                               desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=progress, sums=True)
        loss_sum, correct, total = all_reduce_sum(list(map(float, sums)), dist_info, device)
        tr_loss, tr_acc = loss_sum / max(total, 1), correct / max(total, 1)
        scheduler.step()
        sync_buffers(model, dist_info)
        val_loss, val_acc = evaluate(model, val_loader, device, dist_info)
        row = {"epoch": epoch + 1, "train_loss": round(tr_loss, 5), "train_acc": round(tr_acc, 5), "lr": lr,
               "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5),
               "seconds": round(time.perf_counter() - t0, 2)}
        history.append(row)
        improved = val_acc > best_acc
        if improved:
            best_acc, best_epoch = val_acc, epoch + 1
        if main:  # checkpoints and logs from one process only
            if improved:
                save_model(out / MODEL_FILENAME, model, {**meta, "epoch": epoch + 1, "val_acc": val_acc})
            save_state(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "epoch": epoch, "best_val_acc": best_acc,
                                    "best_epoch": best_epoch, "history": history})
            write_history(out / "history.csv", history)
            plot_curves(history, out / "curves.png")
            figures_page(f"Training {cfg.model}", out / "curves.html",
                         [("loss and accuracy per epoch", out / "curves.png")], [("history", history)])
        barrier(dist_info)
        epochs.set_postfix(val_acc=f"{val_acc:.3f}", best=f"{best_acc:.3f}")
    final_model = model
    cleanup(dist_info)
    result = FitResult(out, best_acc, best_epoch, len(history))
    result.model = final_model
    return result
