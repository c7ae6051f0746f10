"""Typed run configurations. Unknown keys are errors; every run writes its resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator


class TrainConfig(BaseModel):
    """Settings of ``wildwatch train``. ``None`` means: the model's own recipe default."""

    model_config = ConfigDict(extra="forbid")

    data: Path
    model: str = "seed_m4_gap"
    out: Path = Path("runs/latest")
    epochs: int | None = Field(None, ge=1)
    image_size: int | None = Field(None, ge=16)
    batch_size: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    step_size: int | None = Field(None, ge=1)
    gamma: float | None = Field(None, gt=0, le=1)
    weight_decay: float | None = Field(None, ge=0)
    ratios: tuple[float, float, float] | None = None
    pool: Literal["max", "avg", "fuzzy", "fuzzy1"] = "max"
    model_args: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="arguments of the model's builder (wildwatch.models), recorded in "
        "the model file; image_size and pool have settings of their own")
    seed: int = 0
    workers: int = Field(2, ge=0)
    device: str = "auto"
    views: int = Field(0, ge=0, description="augmented views of each training photo besides the mirrored one "
                       "(pretrained backbones)")
    degrade_views: int | None = Field(None, ge=0, description="views of each training photo with random CCTV-style "
                               "degradation (pretrained backbones; see wildwatch.robustness.augment)")
    ood_dir: Path | None = Field(None, description="photos of none of the classes, to report unknown AUROC")
    field: Path | None = Field(None, description="pretrained backbones (cached-feature recipe): photos of the "
                                  "classes from other sources than the training data, one folder per class; with "
                                  "--negatives the decision (threshold, calibrated confidence) is fitted on them "
                                  "(wildwatch.models.decision)")
    negatives: Path | None = Field(None, description="pretrained backbones (cached-feature recipe): photos of "
                                      "none of the classes, one folder per label, that the decision is fitted on "
                                      "with --field")
    negatives_half: Literal["all", "dev", "held_out"] = Field("all", description="which half of --field and "
                                                              "--negatives to fit on (wildwatch.data.splits."
                                                              "hash_halves); the other half stays a measurement")
    clean_labels: bool = Field(True, description="pretrained backbones (cached-feature recipe): leave out of "
                               "training the photos whose folder label the ImageNet classifier contradicts or "
                               "out-of-fold confident learning flags")
    int8_view: bool = Field(True, description="pretrained backbones (cached-feature recipe): also train on the "
                            "features of the network quantised to int8 as the int8 export quantises it, so "
                            "that the int8 copy of the model keeps the fp32 model's answers")
    max_train_batches: int | None = Field(None, ge=1, description="cap per epoch, for smoke runs")
    finetune: bool = Field(False, description="pretrained backbones: train the whole network on batch-degraded "
                           "images (wildwatch.engine.finetune; meant for a GPU) instead of the cached-feature recipe")
    time_limit: float | None = Field(None, gt=0, description="minutes of training after which the run stops "
                                        "and finishes with the best epoch so far (fine-tuning)")

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, v):
        if v is not None and (abs(sum(v) - 1.0) > 1e-6 or min(v) < 0):
            raise ValueError(f"train/val/test ratios must be non-negative and sum to 1, got {v}")
        return v

    @field_validator("model_args")
    @classmethod
    def _model_args_not_settings(cls, v):
        own = sorted({"image_size", "pool"} & set(v))
        if own:
            raise ValueError(f"{', '.join(own)}: set with their own settings (image_size, pool), not model_args")
        return v

    def resolved(self) -> ResolvedConfig:
        """A copy with every training default filled in from the model registry; model arguments the
        model's builder does not take are refused here, before any work."""
        from wildwatch.models.registry import check_arguments

        r = check_arguments(self.model, self.model_args).defaults
        fill = {
            "epochs": r.epochs, "image_size": r.image_size, "batch_size": r.batch_size, "lr": r.lr,
            "step_size": r.step_size, "gamma": r.gamma, "weight_decay": r.weight_decay, "ratios": r.ratios,
            "degrade_views": r.degrade_views,
        }
        given = self.model_dump(exclude_unset=False)
        return ResolvedConfig.model_validate({**given, **{k: v for k, v in fill.items() if given[k] is None}})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


class ResolvedConfig(TrainConfig):
    """A ``TrainConfig`` with every recipe default filled in (``TrainConfig.resolved``): what a run trains
    with, and what its config.yaml records."""

    epochs: int = Field(ge=1)
    image_size: int = Field(ge=16)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    step_size: int = Field(ge=1)
    gamma: float = Field(gt=0, le=1)
    weight_decay: float = Field(ge=0)
    ratios: tuple[float, float, float]
    degrade_views: int = Field(ge=0)
