"""One training skeleton for every recipe: ``fit(cfg)``.

``fit`` owns the run folder (config.yaml, split.json, history.csv/.json, curves.png/.html,
state.pt), resume, atomic checkpoints and the per-epoch reports. A recipe is a small ``Strategy``
it calls: training from scratch (``engine.train``), the cached-feature transfer recipe of
pretrained backbones (``engine.transfer``) and fine-tuning (``engine.finetune``). ``--resume``
means the same for all of them: it continues the run in ``--out`` from its state.pt, with the
config saved there (only ``epochs``, ``workers``, ``device`` and ``time_limit`` may change), and
ends with the weights an uninterrupted run gives.
"""

from __future__ import annotations

import csv
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from tqdm import tqdm

from wildwatch.config import ResolvedConfig, TrainConfig
from wildwatch.data.discover import discover_images, fingerprint
from wildwatch.data.splits import Split, assign_groups, split_by_group
from wildwatch.data.transforms import Preprocess
from wildwatch.engine.checkpoint import load_state, save_state
from wildwatch.errors import UsageError
from wildwatch.models import get_entry

if TYPE_CHECKING:
    from torch import nn

    from wildwatch.engine.distributed import DistInfo

HISTORY_FIELDS = ("epoch", "train_loss", "train_acc", "lr", "val_loss", "val_acc", "seconds")
STATE_FILENAME = "state.pt"
# what a resumed run may change; everything else comes from the run's config.yaml
RESUME_OVERRIDES = ("epochs", "workers", "device", "time_limit")


@dataclass
class FitResult:
    out: Path
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    model: nn.Module | None = None


@dataclass
class Run:
    """What a strategy gets from the skeleton: the resolved config, the folder, the split, where to run."""

    cfg: ResolvedConfig
    out: Path
    split: Split
    data_fingerprint: str
    device: torch.device
    dist: DistInfo
    progress: bool
    started: float = field(default_factory=time.perf_counter)

    @property
    def main(self) -> bool:
        """The process that writes files (the only one outside torchrun)."""
        return self.dist.is_main


@dataclass
class Best:
    epoch: int = -1
    val_acc: float = -1.0
    score: float = -1.0


class Strategy(Protocol):
    """A training recipe. The skeleton calls, in order: ``configure``, ``setup``, ``load_state``
    (on resume), then per epoch ``train_epoch``, ``validate`` and ``keep_best`` (when the score
    improves), ``state`` (saved atomically), and at the end ``finish``."""

    title: str  # "Training", "Fine-tuning": the curves page's title

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        """The config with this recipe's defaults filled in."""

    def setup(self, run: Run) -> None:
        """Build the data, the model and the optimiser."""

    def train_epoch(self, epoch: int) -> dict:
        """One epoch: train_loss, train_acc and lr (at the start of the epoch)."""

    def validate(self, epoch: int) -> tuple[dict, float]:
        """val_loss, val_acc (and any other columns), and the score the best epoch is chosen on."""

    def keep_best(self, epoch: int, row: dict) -> None:
        """Keep this epoch's weights as the best so far."""

    def state(self) -> dict[str, Any]:
        """Tensors and plain values to resume from (model, optimiser, scheduler...)."""

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what ``state`` gave."""

    def finished_elsewhere(self, out: Path) -> tuple[list[dict], Best] | None:
        """(history, best) when the run trained elsewhere and only its best weights came back; else None."""

    def finish(self, run: Run, best: Best, history: list[dict]) -> nn.Module | None:
        """Write the model file from the best epoch; return the model."""


class Recipe:
    """Defaults for a strategy: the config as given, and nothing trained elsewhere to finish."""

    title = "Training"

    def configure(self, cfg: TrainConfig) -> TrainConfig:
        return cfg

    def finished_elsewhere(self, out: Path) -> tuple[list[dict], Best] | None:
        return None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_preprocess(name: str, image_size: int) -> Preprocess:
    return Preprocess(image_size=image_size, **get_entry(name).preprocess)


def prepare_split(cfg: ResolvedConfig, out: Path, progress: bool = True) -> tuple[Split, str]:
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


def strategy_for(cfg: TrainConfig) -> Strategy:
    """The recipe ``cfg`` asks for: fine-tuning, the cached-feature recipe of pretrained backbones, or from scratch."""
    pretrained = bool(get_entry(cfg.model).preprocess)
    if (cfg.negatives is not None or cfg.field is not None) and (cfg.finetune or not pretrained):
        raise UsageError("--field and --negatives fit the decision of the cached-feature recipe of "
                         "pretrained backbones (effnet_lite0 without --finetune)")
    if (cfg.negatives is None) != (cfg.field is None) and not cfg.finetune and pretrained:
        raise UsageError("--field and --negatives go together: the decision is fitted on photos of the classes "
                         "and of other things from the same kind of source")
    if cfg.finetune:
        if not pretrained:
            raise UsageError(f"--finetune is for pretrained backbones (effnet_lite0); {cfg.model} trains with "
                             "its own recipe")
        from wildwatch.engine.finetune import FineTune

        return FineTune()
    if pretrained:
        from wildwatch.engine.transfer import CachedFeatureTransfer

        return CachedFeatureTransfer()
    from wildwatch.engine.train import FromScratch

    return FromScratch()


def _open_run(cfg: TrainConfig, resume: bool, strategy: Strategy, progress: bool) -> tuple[Run, bool]:
    """Check the folder, settle the config, join the process group, make or load the split.
    Returns the run and whether state.pt is there to resume from."""
    from wildwatch.engine.device import resolve_device
    from wildwatch.engine.distributed import barrier, setup_distributed

    out = Path(cfg.out)
    state_path = out / STATE_FILENAME
    if (out / "config.yaml").exists() and not resume:
        raise FileExistsError(f"{out}: a run is already there; pass --resume to continue it or choose another --out")
    if resume and not state_path.exists() and strategy.finished_elsewhere(out) is None:
        raise FileNotFoundError(f"{out}: nothing to resume (no {STATE_FILENAME}); start without --resume")
    if resume:
        saved = TrainConfig.load(out / "config.yaml")
        cfg = saved.model_copy(update={k: getattr(cfg, k) for k in RESUME_OVERRIDES})
    cfg = strategy.configure(cfg).resolved()
    device = resolve_device(cfg.device)
    dist = setup_distributed(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    barrier(dist)  # every rank has checked the folder before the main one writes to it
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.save(out / "config.yaml")
        split, fp = prepare_split(cfg, out, progress)
    barrier(dist)
    if not dist.is_main:
        split, fp = prepare_split(cfg, out, progress=False)  # reads the saved split.json
    return Run(cfg, out, split, fp, device, dist, progress and dist.is_main), resume and state_path.exists()


def _report(run: Run, strategy: Strategy, history: list[dict]) -> None:
    from wildwatch.reports import plots
    from wildwatch.reports.html import figures_page

    write_history(run.out / "history.csv", history)
    (run.out / "history.json").write_text(json.dumps(history, indent=1))
    plots.plot_curves(history, run.out / "curves.png")
    figures_page(f"{strategy.title} {run.cfg.model}", run.out / "curves.html",
                 [("loss and accuracy per epoch", run.out / "curves.png")], [("history", history)])


def _write_manifest(run: Run) -> None:
    """The run folder's bundle manifest: the model file and its readable metadata (``models.bundle``)."""
    from wildwatch.models.bundle import fresh_bundle, write_manifest
    from wildwatch.models.files import MODEL_FILENAME

    weights = run.out / MODEL_FILENAME
    if weights.is_file():
        write_manifest(fresh_bundle(weights), f"{run.cfg.model} trained by wildwatch train")


def fit(cfg: TrainConfig, resume: bool = False, progress: bool = True, strategy: Strategy | None = None) -> FitResult:
    """Train ``cfg.model`` on ``cfg.data`` with its recipe, keeping the best epoch on validation
    (the test split is never used for that). With ``resume`` an interrupted run continues from
    state.pt and ends with the same weights as an uninterrupted one."""
    from wildwatch.engine.distributed import barrier, cleanup

    strategy = strategy or strategy_for(cfg)
    run, has_state = _open_run(cfg, resume, strategy, progress)
    cfg = run.cfg
    strategy.setup(run)
    start, best, history, finished = 0, Best(), [], False
    if has_state:
        st = load_state(run.out / STATE_FILENAME)
        strategy.load_state(st)
        start, history, finished = st["epoch"] + 1, st["history"], st.get("finished", False)
        best = Best(st["best_epoch"], st["best_val_acc"], st.get("best_val_score", st["best_val_acc"]))
    elif resume:
        elsewhere = strategy.finished_elsewhere(run.out)
        if elsewhere is None:  # _open_run checked there is something to resume
            raise FileNotFoundError(f"{run.out}: nothing to resume (no {STATE_FILENAME}); start without --resume")
        history, best = elsewhere
        finished = True
    bar = tqdm(range(start, cfg.epochs) if not finished else range(0), desc=f"{strategy.title.lower()} {cfg.model}",
               unit="epoch", disable=not run.progress, initial=start, total=cfg.epochs)
    for epoch in bar:
        t0 = time.perf_counter()
        row = {"epoch": epoch + 1, **strategy.train_epoch(epoch)}
        val, score = strategy.validate(epoch)
        row.update(val)
        row["seconds"] = round(time.perf_counter() - t0, 2)
        history.append(row)
        improved = score > best.score
        if improved:
            best = Best(epoch + 1, row["val_acc"], score)
        over_time = cfg.time_limit is not None and (time.perf_counter() - run.started) / 60 > cfg.time_limit
        finished = over_time  # a run stopped by its time limit resumes straight to finish; others continue
        if run.main:  # checkpoints and reports from one process only
            if improved:
                strategy.keep_best(epoch, row)
            save_state(run.out / STATE_FILENAME, {**strategy.state(), "epoch": epoch, "best_val_acc": best.val_acc,
                                                  "best_val_score": best.score, "best_epoch": best.epoch,
                                                  "history": history, "finished": finished})
            _report(run, strategy, history)
        barrier(run.dist)
        bar.set_postfix(val_acc=f"{row['val_acc']:.4f}", best=f"{best.val_acc:.4f}")
        if over_time:
            tqdm.write(f"time limit of {cfg.time_limit} min reached after epoch {epoch + 1}; finishing")
            break
    model = strategy.finish(run, best, history)
    if run.main:
        _write_manifest(run)
    cleanup(run.dist)
    return FitResult(run.out, best.val_acc, best.epoch, len(history), model)
