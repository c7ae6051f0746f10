"""Training from scratch (the seed CNNs): train_one_epoch, evaluate, and the ``FromScratch`` recipe
that ``engine.fit.fit`` runs. Adam with step-halving learning rate, as the seed design; DDP under torchrun."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from wildwatch.data.datasets import ImageDataset, make_loader
from wildwatch.data.transforms import eval_transform, train_transform
from wildwatch.engine.fit import Best, Recipe, Run, fit, model_preprocess, seed_everything
from wildwatch.models import create_model, get_entry
from wildwatch.models.files import MODEL_FILENAME, save_model

__all__ = ["FromScratch", "evaluate", "fit", "predict_logits", "train_one_epoch"]


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


class FromScratch(Recipe):
    """The seed recipe: every layer trained from random weights on augmented photos."""

    def setup(self, run: Run) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP
        from torch.utils.data import Dataset, DistributedSampler, Subset

        from wildwatch.engine.distributed import shard

        cfg, split, dist, device = run.cfg, run.split, run.dist, run.device
        self.run = run
        pre = model_preprocess(cfg.model, cfg.image_size)
        self.train_ds = ImageDataset(cfg.data, split.train, split.classes, train_transform(pre))
        val_all = ImageDataset(cfg.data, split.val, split.classes, eval_transform(pre))
        val_ds: Dataset = Subset(val_all, shard(len(val_all), dist)) if dist.enabled else val_all
        self.val_loader = make_loader(val_ds, cfg.batch_size * 2, shuffle=False, workers=cfg.workers)
        seed_everything(cfg.seed)
        # the input size and pooling where the model takes them, then the run's own model arguments
        kwargs = {**get_entry(cfg.model).accepted({"image_size": cfg.image_size, "pool": cfg.pool}), **cfg.model_args}
        self.model = create_model(cfg.model, len(split.classes), **kwargs).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        self.net = (DDP(self.model, device_ids=[device.index] if device.type == "cuda" else None)
                    if dist.enabled else self.model)
        self.sampler: DistributedSampler | None = None
        if dist.enabled:
            self.sampler = DistributedSampler(self.train_ds, dist.world_size, dist.rank, shuffle=True, seed=cfg.seed,
                                              drop_last=True)
        self.meta = {
            "architecture": cfg.model, "model_kwargs": kwargs,
            "classes": split.classes, "preprocess": pre.to_json(), "temperature": 1.0,
            "data_fingerprint": run.data_fingerprint,
            "split": {"seed": split.seed, "ratios": list(split.ratios), "grouping": split.grouping,
                      "sizes": {n: len(split.part(n)) for n in ("train", "val", "test")}},
            "processes": dist.world_size,
        }

    def train_epoch(self, epoch: int) -> dict:
        from wildwatch.engine.distributed import all_reduce_sum

        cfg, dist = self.run.cfg, self.run.dist
        seed_everything(cfg.seed * 100_003 + epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 7919 * dist.rank)
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        loader = make_loader(self.train_ds, cfg.batch_size, shuffle=True, workers=cfg.workers, generator=gen,
                             drop_last=self.sampler is not None or len(self.train_ds) > cfg.batch_size,
                             sampler=self.sampler)
        lr = self.optimizer.param_groups[0]["lr"]
        sums = train_one_epoch(self.net, loader, self.optimizer, self.run.device, cfg.max_train_batches,
                               desc=f"epoch {epoch + 1}/{cfg.epochs}", progress=self.run.progress, sums=True)
        loss_sum, correct, total = all_reduce_sum(list(map(float, sums)), dist, self.run.device)
        self.scheduler.step()
        return {"train_loss": round(loss_sum / max(total, 1), 5), "train_acc": round(correct / max(total, 1), 5),
                "lr": lr}

    def validate(self, epoch: int) -> tuple[dict, float]:
        from wildwatch.engine.distributed import sync_buffers

        sync_buffers(self.model, self.run.dist)
        val_loss, val_acc = evaluate(self.model, self.val_loader, self.run.device, self.run.dist)
        return {"val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5)}, val_acc

    def keep_best(self, epoch: int, row: dict) -> None:
        save_model(self.run.out / MODEL_FILENAME, self.model, {**self.meta, "epoch": epoch + 1, "val_acc": row["val_acc"]})

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def finish(self, run: Run, best: Best, history: list[dict]):
        return self.model  # the best epoch's model file was written when it was reached
