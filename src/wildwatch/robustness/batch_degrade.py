"""Degradations of a whole batch on the training device (GPU or CPU), for fine-tuning the backbone.

``BatchDegrade`` takes float images in [0, 1] of shape (N, 3, H, W) and degrades each one on its
own: a chain of one or two random operations at a random severity, or, for some images, an
AugMix-style mixture of chains (Hendrycks et al., ICLR 2020: Dirichlet-weighted chains blended
with the original by a Beta weight). Every parameter is drawn per image from a seeded
``torch.Generator``, so a batch degrades the same way for the same seed.

The operations cover what CCTV, camera traps and phones do to a photo, in torch so that they run
at the speed of the network on a GPU: sensor noise (Gaussian, shot, impulse, speckle), blur
(Gaussian, defocus disk, motion along a line, zoom, glass-like pixel jitter), geometric warps
(elastic), pixelation and low resolution, JPEG blocks (8x8 DCT quantisation with the standard
tables), light (brightness, contrast, saturation, dim and night/infra-red), weather (fog,
frost-like ice, snow) and occluding rectangles. Those that CPU training or the benchmark also
apply (noise, blur, motion blur, low resolution, JPEG, dim light, night/IR, occlusion) are the
corruption library's (``ops``); the ranges are ``ranges.BATCH``. The benchmark's ImageNet-C
corruptions are another implementation (``corrupt-tta``), and pasted people or objects and small
animals in large scenes are never trained on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from wildwatch.robustness import ops as O
from wildwatch.robustness.ops import disk_kernels, gaussian_kernels, line_kernels, per_image_conv
from wildwatch.robustness.ranges import BATCH as R

Op = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _rand(n: int, g: torch.Generator, device, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample x at (identity + flow); flow (N, H, W, 2) in normalised [-1, 1] units."""
    n, _, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0).expand(n, 2, 3)
    base = F.affine_grid(theta, [n, 3, h, w], align_corners=False)
    return F.grid_sample(x, base + flow.to(x.dtype), mode=mode, padding_mode="reflection", align_corners=False)


def _smooth_noise(n: int, h: int, w: int, cells: int, g: torch.Generator, device, channels: int = 1) -> torch.Tensor:
    """Random values on a coarse ``cells``-wide grid, upsampled smoothly to (N, channels, H, W)."""
    coarse = torch.rand(n, channels, max(1, cells * h // w), cells, generator=g, device=device) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


# --- noise ---------------------------------------------------------------------------------------
def gaussian_noise(x, s, g):
    return O.gaussian_noise(x, torch.randn(x.shape, generator=g, device=x.device) * R.gaussian_noise.at(s))


def shot_noise(x, s, g):
    lam = R.shot_photons.at(s)
    return torch.poisson(x.clamp(0, 1) * lam, generator=g) / lam


def impulse_noise(x, s, g):
    p = R.impulse_share.at(s)
    u = torch.rand(x.shape, generator=g, device=x.device)
    out = torch.where(u < p / 2, torch.zeros_like(x), x)
    return torch.where(u > 1 - p / 2, torch.ones_like(x), out)


def speckle_noise(x, s, g):
    return x + x * torch.randn(x.shape, generator=g, device=x.device) * R.speckle.at(s)


# --- blur ----------------------------------------------------------------------------------------
def gaussian_blur(x, s, g):
    return O.gaussian_blur(x, R.blur_sigma.flat(s))


def defocus_blur(x, s, g):
    return per_image_conv(x, disk_kernels(R.defocus_radius.flat(s)))


def motion_blur(x, s, g):
    n = len(x)
    length = R.motion_px.flat(s)
    angle = _rand(n, g, x.device, 0, math.pi * 2)
    offset = _rand(n, g, x.device, 0, 0.5)
    return O.motion_blur(x, line_kernels(length, angle, offset))


def zoom_blur(x, s, g, steps: int = 6):
    n = len(x)
    zmax = R.zoom.flat(s)
    acc = x.clone()
    for i in range(1, steps):
        z = 1.0 + (zmax - 1.0) * i / (steps - 1)
        theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / z
        grid = F.affine_grid(theta, x.shape, align_corners=False)
        acc = acc + F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return acc / steps


def glass_blur(x, s, g):
    n, _, h, w = x.shape
    x = per_image_conv(x, gaussian_kernels(R.glass_sigma.flat(s)))
    d = R.glass_px.at(s)  # pixels
    jitter = (torch.rand(n, h, w, 2, generator=g, device=x.device) * 2 - 1) * d
    flow = torch.round(jitter) * torch.tensor([2.0 / w, 2.0 / h], device=x.device)
    x = _warp(x, flow, mode="nearest")
    return per_image_conv(x, gaussian_kernels(R.glass_sigma.flat(s)))


def elastic(x, s, g):
    n, _, h, w = x.shape
    field = _smooth_noise(n, h, w, 6, g, x.device, channels=2)
    amp = R.elastic.at(s)  # fraction of the half-width
    flow = (field * amp).permute(0, 2, 3, 1)
    return _warp(x, flow)


def pixelate(x, s, g):
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    keep = R.pixelate
    for i in range(n):
        # written from the heavy end, as the range was tuned
        f = keep.heavy + (keep.light - keep.heavy) * (1 - float(s[i]))
        small = F.interpolate(x[i:i + 1], size=(max(2, round(h * f)), max(2, round(w * f))), mode="area")
        out[i:i + 1] = F.interpolate(small, size=(h, w), mode="nearest")
    return out


def low_resolution(x, s, g):
    out = torch.empty_like(x)
    modes = torch.randint(0, 2, (len(x),), generator=g, device=x.device)
    side = R.low_res_px
    for i in range(len(x)):
        px = side.heavy + (side.light - side.heavy) * (1 - float(s[i]))  # from the heavy end, as tuned
        out[i:i + 1] = O.low_resolution(x[i:i + 1], px, "bicubic" if int(modes[i]) else "bilinear",
                                        resampler="torch")
    return out


def jpeg(x, s, g):
    """Blockwise DCT quantisation at quality 40 (severity 0) to 5 (severity 1), 4:2:0 chroma."""
    return O.jpeg_dct(x, R.jpeg_quality.flat(s))


# --- light ---------------------------------------------------------------------------------------
def brightness(x, s, g):
    sign = torch.where(torch.rand(len(x), generator=g, device=x.device) < 0.7, 1.0, -1.0).view(-1, 1, 1, 1)
    return x + sign * R.brightness.at(s)


def contrast(x, s, g):
    return O.contrast(x, R.contrast.at(s))


def saturation(x, s, g):
    grey = O.grey(x)
    low = torch.rand(len(x), generator=g, device=x.device) < 0.5
    f = torch.where(low.view(-1, 1, 1, 1), R.desaturate.at(s), R.saturate.at(s))
    return grey + (x - grey) * f


def dim(x, s, g):
    return O.dim(x, R.contrast.at(s * R.dim_contrast), R.dim_light.at(s))


def night(x, s, g):
    noise = torch.randn((len(x), 1, *x.shape[2:]), generator=g, device=x.device) * R.night_noise.at(s)
    return O.night_ir(x, R.night_gamma.at(s), noise)


# --- weather -------------------------------------------------------------------------------------
def _octaves(n, h, w, g, device, decay: float) -> torch.Tensor:
    acc = torch.zeros(n, 1, h, w, device=device)
    for k, cells in enumerate((2, 4, 8, 16, 32)):
        acc = acc + _smooth_noise(n, h, w, cells, g, device) * decay ** k
    lo = acc.amin((2, 3), keepdim=True)
    hi = acc.amax((2, 3), keepdim=True)
    return (acc - lo) / (hi - lo + 1e-6)


def fog(x, s, g):
    n, _, h, w = x.shape
    a = R.fog.at(s)
    mx = x.amax((1, 2, 3), keepdim=True)
    return (x + a * _octaves(n, h, w, g, x.device, 0.6)) * mx / (mx + a)


def frost(x, s, g):
    """Bright, crystalline streaks over a whitened image (a synthetic stand-in for ice on a lens)."""
    n, _, h, w = x.shape
    fine = torch.rand(n, 1, h, w, generator=g, device=x.device)
    angle = _rand(n, g, x.device, 0, math.pi)
    streak = per_image_conv(fine, line_kernels(torch.full((n,), 5.0, device=x.device), angle,
                                               torch.full((n,), 0.5, device=x.device)))
    ice = (streak - streak.mean((2, 3), keepdim=True)) * 4 + 0.4 * _octaves(n, h, w, g, x.device, 0.7)
    ice = ice.clamp(0, 1) * torch.tensor([0.92, 0.96, 1.0], device=x.device).view(1, 3, 1, 1)
    return R.frost_image.at(s) * x + R.frost_ice.at(s) * ice


def snow(x, s, g):
    n, _, h, w = x.shape
    grey = O.grey(x)
    keep = R.snow_image.at(s)
    x = keep * x + (1 - keep) * torch.maximum(x, grey * 1.5 + 0.5)
    cell = int(torch.randint(1, 3, (1,), generator=g, device=x.device))
    coarse = torch.rand(n, 1, h // cell, w // cell, generator=g, device=x.device)
    flakes = (coarse > (1 - R.snow_flakes.at(s))).float()
    flakes = F.interpolate(flakes, size=(h, w), mode="nearest")
    length = R.snow_px.flat(s)
    angle = _rand(n, g, x.device, math.pi * 0.3, math.pi * 0.7)
    streaks = per_image_conv(flakes, line_kernels(length, angle, torch.full((n,), 0.5, device=x.device)))
    streaks = (streaks * length.view(-1, 1, 1, 1) * 0.8).clamp(0, 1)
    return x + streaks


# --- occlusion -----------------------------------------------------------------------------------
def occlude(x, s, g):
    """A rectangle over 8-40% of the frame: flat colour, noise, or a mirrored part of the image."""
    n, _, h, w = x.shape
    out = x.clone()
    frac = R.occluded.flat(s)
    aspect = torch.exp(_rand(n, g, x.device, math.log(R.occluder_aspect.low), math.log(R.occluder_aspect.high)))
    kind = torch.randint(0, 3, (n,), generator=g, device=x.device)
    u = torch.rand(n, 2, generator=g, device=x.device)
    colour = torch.rand(n, 3, generator=g, device=x.device)
    for i in range(n):
        ph, pw = O.occluder_size(float(frac[i]), float(aspect[i]), h, w)
        top, left = int(float(u[i, 0]) * (h - ph)), int(float(u[i, 1]) * (w - pw))
        k = int(kind[i])
        noise = torch.rand(3, ph, pw, generator=g, device=x.device) if k == 1 else None
        out[i] = O.occlude(x[i], (top, left, ph, pw), k, colour[i], noise)
    return out


OPS: dict[str, Op] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "defocus_blur": defocus_blur,
    "motion_blur": motion_blur, "zoom_blur": zoom_blur, "glass_blur": glass_blur, "elastic": elastic,
    "pixelate": pixelate, "low_resolution": low_resolution, "jpeg": jpeg, "brightness": brightness,
    "contrast": contrast, "saturation": saturation, "dim": dim, "night": night, "fog": fog,
    "frost": frost, "snow": snow, "occlude": occlude,
}


def colour_jitter(x: torch.Tensor, g: torch.Generator, strength: float = R.colour_jitter) -> torch.Tensor:
    """Mild per-image brightness, contrast and saturation changes (every training image)."""
    n = len(x)
    b = _rand(n, g, x.device, 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    c = _rand(n, g, x.device, 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    sat = _rand(n, g, x.device, 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    x = x * b
    mean = O.grey(x).mean((2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = O.grey(x)
    return ((x - grey) * sat + grey).clamp(0, 1)


class BatchDegrade:
    """Random per-image degradation of a batch in [0, 1] (see the module docstring).

    ``p_clean``: share of images left as they are; of the others, ``p_mix`` get an AugMix-style
    mixture of ``width`` chains, the rest one chain; a chain is 1..``max_depth`` operations.
    """

    def __init__(self, p_clean: float = 0.3, p_mix: float = 0.3, width: int = 3, max_depth: int = 2,
                 ops: dict[str, Op] | None = None):
        self.p_clean, self.p_mix, self.width, self.max_depth = p_clean, p_mix, width, max_depth
        self.ops = dict(OPS if ops is None else ops)
        self.names = sorted(self.ops)

    def chain(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = len(x)
        depth = torch.randint(1, self.max_depth + 1, (n,), generator=g, device=x.device)
        for step in range(self.max_depth):
            choice = torch.randint(0, len(self.names), (n,), generator=g, device=x.device)
            sev = torch.rand(n, generator=g, device=x.device)
            active = depth > step
            x = x.clone()
            for k, name in enumerate(self.names):
                idx = torch.nonzero(active & (choice == k)).flatten()
                if len(idx):
                    x[idx] = self.ops[name](x[idx], sev[idx], g).clamp(0, 1).to(x.dtype)
        return x

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n = len(x)
        u = torch.rand(n, generator=g, device=x.device)
        mixed = torch.nonzero(u < (1 - self.p_clean) * self.p_mix).flatten()
        single = torch.nonzero((u >= (1 - self.p_clean) * self.p_mix) & (u < 1 - self.p_clean)).flatten()
        out = x.clone()
        if len(single):
            out[single] = self.chain(x[single], g)
        if len(mixed):
            xm = x[mixed]
            # Dirichlet(1, ..., 1): normalised exponential draws
            e = -torch.log(torch.rand(len(mixed), self.width, generator=g, device=x.device).clamp(min=1e-12))
            weights = e / e.sum(1, keepdim=True)
            mix = sum(weights[:, j].view(-1, 1, 1, 1) * self.chain(xm, g) for j in range(self.width))
            m = torch.rand(len(mixed), generator=g, device=x.device).view(-1, 1, 1, 1)
            out[mixed] = m * xm + (1 - m) * mix
        return out
