"""The training ranges of every degradation, in one place.

Two training paths degrade photos: ``augment.Degrade`` makes the cached views of the frozen-trunk
recipe on the CPU (one PIL image at a time, parameters drawn uniformly from a ``Span``), and
``batch_degrade.BatchDegrade`` degrades batches on the training device for fine-tuning (a severity
``s`` in [0, 1] per image, the parameter ``Span.at(s)``). A ``Span`` runs from its ``light`` end
(severity 0) to its ``heavy`` end (severity 1). Where both paths degrade the same way they share
one ``Span`` (night/IR, JPEG quality, the occluder's aspect); elsewhere each keeps the range it
was tuned with. The benchmark's severity tables are not training ranges: they stay with the
benchmark (``corruptions``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class Span:
    """A parameter's range, from its value at severity 0 (``light``) to severity 1 (``heavy``)."""

    light: float
    heavy: float

    @property
    def low(self) -> float:
        return min(self.light, self.heavy)

    @property
    def high(self) -> float:
        return max(self.light, self.heavy)

    def at(self, s: torch.Tensor) -> torch.Tensor:
        """The parameter at severities ``s`` (one per image), shaped to broadcast on (N, C, H, W)."""
        return (self.light + (self.heavy - self.light) * s).view(-1, 1, 1, 1)

    def flat(self, s: torch.Tensor) -> torch.Tensor:
        """The parameter at severities ``s``, one value per image."""
        return self.light + (self.heavy - self.light) * s

    def draw(self, rng: np.random.Generator) -> float:
        """A uniform draw between the two ends."""
        return float(rng.uniform(self.low, self.high))

    def draw_int(self, rng: np.random.Generator) -> int:
        """A uniform whole number between the two ends, both included."""
        return int(rng.integers(int(self.low), int(self.high) + 1))


# Shared by both training paths.
NIGHT_GAMMA = Span(1.2, 3.0)
NIGHT_NOISE = Span(0.01, 0.1)  # standard deviation, in units of the full range
JPEG_QUALITY = Span(40, 5)
OCCLUDER_ASPECT = Span(0.5, 2.0)  # drawn uniformly in log space


@dataclass(frozen=True)
class DegradeRanges:
    """``augment.Degrade``: the cached views of the frozen-trunk recipe."""

    blur_sigma: Span = Span(0.5, 3.0)
    noise_sigma: Span = Span(0.02, 0.15)
    jpeg_quality: Span = JPEG_QUALITY
    low_res_px: Span = Span(100, 28)  # long side before upsampling back
    low_res_bicubic: float = 0.7  # share upsampled with bicubic; the others with nearest
    night_gamma: Span = NIGHT_GAMMA
    night_noise: Span = NIGHT_NOISE
    motion_px: Span = Span(5, 25)
    motion_angle_deg: Span = Span(0, 180)
    dim_contrast: Span = Span(0.9, 0.2)
    dim_brightness: Span = Span(1.3, 0.4)
    occluded: Span = Span(0.1, 0.4)  # share of the frame
    occluder_aspect: Span = OCCLUDER_ASPECT


@dataclass(frozen=True)
class BatchRanges:
    """``batch_degrade.BatchDegrade``: fine-tuning on the training device."""

    gaussian_noise: Span = Span(0.02, 0.22)
    shot_photons: Span = Span(80.0, 4.0)
    impulse_share: Span = Span(0.005, 0.12)
    speckle: Span = Span(0.05, 0.4)
    blur_sigma: Span = Span(0.5, 3.5)
    defocus_radius: Span = Span(1.0, 7.0)
    motion_px: Span = Span(3.0, 27.0)
    zoom: Span = Span(1.0, 1.35)
    glass_sigma: Span = Span(0.4, 1.2)
    glass_px: Span = Span(1.0, 4.0)
    elastic: Span = Span(0.01, 0.06)  # share of the half-width
    pixelate: Span = Span(0.62, 0.12)  # share of the side kept
    low_res_px: Span = Span(112, 24)
    jpeg_quality: Span = JPEG_QUALITY
    brightness: Span = Span(0.08, 0.5)
    contrast: Span = Span(0.7, 0.12)
    desaturate: Span = Span(0.6, 0.0)
    saturate: Span = Span(1.4, 3.0)
    dim_contrast: float = 0.8  # dim light: the contrast change at this share of the severity
    dim_light: Span = Span(0.9, 0.35)
    night_gamma: Span = NIGHT_GAMMA
    night_noise: Span = NIGHT_NOISE
    fog: Span = Span(0.3, 2.2)
    frost_image: Span = Span(0.95, 0.6)
    frost_ice: Span = Span(0.3, 0.75)
    snow_image: Span = Span(0.9, 0.55)
    snow_flakes: Span = Span(0.005, 0.04)
    snow_px: Span = Span(3.0, 13.0)
    occluded: Span = Span(0.08, 0.4)
    occluder_aspect: Span = OCCLUDER_ASPECT
    colour_jitter: float = 0.3


DEGRADE = DegradeRanges()
BATCH = BatchRanges()
