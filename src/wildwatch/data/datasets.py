"""Torch datasets and loaders over a list of samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from wildwatch.data.discover import Sample
from wildwatch.data.loading import load_image


class ImageDataset(Dataset):
    """Samples under ``root`` → (tensor, class index). A file that cannot be read raises
    ImageLoadError naming it (run ``wildwatch data audit`` first to find such files)."""

    def __init__(self, root: str | Path, samples: Sequence[Sample], classes: Sequence[str], transform: Callable):
        self.root = Path(root)
        self.samples = list(samples)
        self.class_to_idx = {c: i for i, c in enumerate(classes)}
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        img = load_image(self.root / s.relpath)
        return self.transform(img), self.class_to_idx[s.label]

    @property
    def targets(self) -> list[int]:
        return [self.class_to_idx[s.label] for s in self.samples]


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    workers: int = 2,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    sampler=None,
    persistent: bool = False,
) -> DataLoader:
    """A DataLoader with worker processes; shuffling draws from ``generator`` so runs repeat.
    A ``sampler`` (e.g. DistributedSampler) replaces ``shuffle``. ``persistent`` keeps the workers
    between epochs (the sampler then gives each epoch its order)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        generator=generator,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
    )
