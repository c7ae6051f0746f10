"""Degradations of a whole batch on the training device (GPU or CPU), for fine-tuning the backbone.

``BatchDegrade`` takes float images in [0, 1] of shape (N, 3, H, W) and degrades each one on its
own: a chain of one or two random operations at a random severity, or, for some images, an
AugMix-style mixture of chains (Hendrycks et al., ICLR 2020: Dirichlet-weighted chains blended
with the original by a Beta weight). Every parameter is drawn per image from a seeded
``torch.Generator``, so a batch degrades the same way for the same seed.

The operations cover what CCTV, camera traps and phones do to a photo, written here in torch so
that they run at the speed of the network on a GPU: sensor noise (Gaussian, shot, impulse,
speckle), blur (Gaussian, defocus disk, motion along a line, zoom, glass-like pixel jitter),
geometric warps (elastic), pixelation and low resolution, JPEG blocks (8x8 DCT quantisation with
the standard tables), light (brightness, contrast, saturation, dim and night/infra-red), weather
(fog, frost-like ice, snow) and occluding rectangles. They are families like those of ImageNet-C
and the CCTV conditions of the robustness benchmark, with their own parameters and code; the
benchmark (``wildwatch.robustness.corruptions``) uses another implementation, and pasted people
or objects and small animals in large scenes are never trained on.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

Op = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def _rand(n: int, g: torch.Generator, device, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) * (hi - lo) + lo


def _lerp(s: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Severity in [0, 1] → parameter in [lo, hi], one per image, shaped to broadcast on images."""
    return (lo + (hi - lo) * s).view(-1, 1, 1, 1)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def per_image_conv(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve image i with ``kernels[i]`` (N, k, k) on every channel, reflecting at the borders."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    pad = k // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    weight = kernels.to(x.dtype).repeat_interleave(c, 0).unsqueeze(1)
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)


def _grid(k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(k, device=device, dtype=torch.float32) - k // 2
    return r.view(1, 1, k), r.view(1, k, 1)  # (x, y)


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    k = 2 * int(math.ceil(3 * float(sigma.max()))) + 1
    xs, ys = _grid(k, sigma.device)
    s = sigma.view(-1, 1, 1)
    ker = torch.exp(-(xs ** 2 + ys ** 2) / (2 * s ** 2))
    return ker / ker.sum((1, 2), keepdim=True)


def disk_kernels(radius: torch.Tensor) -> torch.Tensor:
    k = 2 * int(math.ceil(float(radius.max()))) + 3
    xs, ys = _grid(k, radius.device)
    ker = (radius.view(-1, 1, 1) + 0.5 - torch.sqrt(xs ** 2 + ys ** 2)).clamp(0, 1)
    return ker / ker.sum((1, 2), keepdim=True)


def line_kernels(length: torch.Tensor, angle: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Anti-aliased segments of ``length`` pixels at ``angle`` (radians); ``offset`` in [0, 0.5]
    moves the segment from centred (0.5) to starting at the centre (0): a one-sided streak."""
    k = 2 * int(math.ceil(float(length.max()))) + 3
    xs, ys = _grid(k, length.device)
    dx, dy = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    start = -(offset * length).view(-1, 1, 1)
    end = start + length.view(-1, 1, 1)
    t = (xs * dx + ys * dy).clamp(min=start, max=end)  # projection onto the segment, clipped
    d = torch.sqrt((xs - t * dx) ** 2 + (ys - t * dy) ** 2)
    ker = (1 - d).clamp(0, 1)
    return ker / ker.sum((1, 2), keepdim=True)


def _warp(x: torch.Tensor, flow: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample x at (identity + flow); flow (N, H, W, 2) in normalised [-1, 1] units."""
    n, _, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0).expand(n, 2, 3)
    base = F.affine_grid(theta, (n, 3, h, w), align_corners=False)
    return F.grid_sample(x, base + flow.to(x.dtype), mode=mode, padding_mode="reflection", align_corners=False)


def _smooth_noise(n: int, h: int, w: int, cells: int, g: torch.Generator, device, channels: int = 1) -> torch.Tensor:
    """Random values on a coarse ``cells``-wide grid, upsampled smoothly to (N, channels, H, W)."""
    coarse = torch.rand(n, channels, max(1, cells * h // w), cells, generator=g, device=device) * 2 - 1
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)


# --- noise ---------------------------------------------------------------------------------------
def gaussian_noise(x, s, g):
    return x + torch.randn(x.shape, generator=g, device=x.device) * _lerp(s, 0.02, 0.22)


def shot_noise(x, s, g):
    lam = _lerp(s, 80.0, 4.0)
    return torch.poisson(x.clamp(0, 1) * lam, generator=g) / lam


def impulse_noise(x, s, g):
    p = _lerp(s, 0.005, 0.12)
    u = torch.rand(x.shape, generator=g, device=x.device)
    out = torch.where(u < p / 2, torch.zeros_like(x), x)
    return torch.where(u > 1 - p / 2, torch.ones_like(x), out)


def speckle_noise(x, s, g):
    return x + x * torch.randn(x.shape, generator=g, device=x.device) * _lerp(s, 0.05, 0.4)


# --- blur ----------------------------------------------------------------------------------------
def gaussian_blur(x, s, g):
    return per_image_conv(x, gaussian_kernels(0.5 + 3.0 * s))


def defocus_blur(x, s, g):
    return per_image_conv(x, disk_kernels(1.0 + 6.0 * s))


def motion_blur(x, s, g):
    n = len(x)
    length = 3.0 + 24.0 * s
    angle = _rand(n, g, x.device, 0, math.pi * 2)
    offset = _rand(n, g, x.device, 0, 0.5)
    return per_image_conv(x, line_kernels(length, angle, offset))


def zoom_blur(x, s, g, steps: int = 6):
    n = len(x)
    zmax = 1.0 + 0.35 * s
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
    x = per_image_conv(x, gaussian_kernels(0.4 + 0.8 * s))
    d = (1.0 + 3.0 * s).view(-1, 1, 1, 1)  # pixels
    jitter = (torch.rand(n, h, w, 2, generator=g, device=x.device) * 2 - 1) * d
    flow = torch.round(jitter) * torch.tensor([2.0 / w, 2.0 / h], device=x.device)
    x = _warp(x, flow, mode="nearest")
    return per_image_conv(x, gaussian_kernels(0.4 + 0.8 * s))


def elastic(x, s, g):
    n, _, h, w = x.shape
    field = _smooth_noise(n, h, w, 6, g, x.device, channels=2)
    amp = _lerp(s, 0.01, 0.06)  # fraction of the half-width
    flow = (field * amp).permute(0, 2, 3, 1)
    return _warp(x, flow)


def pixelate(x, s, g):
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(n):
        f = 0.12 + 0.5 * (1 - float(s[i]))
        small = F.interpolate(x[i:i + 1], size=(max(2, round(h * f)), max(2, round(w * f))), mode="area")
        out[i:i + 1] = F.interpolate(small, size=(h, w), mode="nearest")
    return out


def low_resolution(x, s, g):
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    modes = torch.randint(0, 2, (n,), generator=g, device=x.device)
    for i in range(n):
        side = 24 + (112 - 24) * (1 - float(s[i]))
        f = side / max(h, w)
        small = F.interpolate(x[i:i + 1], size=(max(2, round(h * f)), max(2, round(w * f))), mode="area")
        out[i:i + 1] = F.interpolate(small, size=(h, w), mode="bicubic" if int(modes[i]) else "bilinear",
                                     align_corners=False)
    return out


# --- JPEG ----------------------------------------------------------------------------------------
# Quantisation tables of the JPEG standard (ITU-T T.81, Annex K), luminance and chrominance.
_Q_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
           14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
           49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_Q_CHROMA = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
             47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32


def _dct_matrix(device) -> torch.Tensor:
    k = torch.arange(8, device=device, dtype=torch.float32)
    m = torch.cos((2 * k.view(1, 8) + 1) * k.view(8, 1) * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m


def jpeg(x, s, g):
    """Blockwise DCT quantisation at quality 40 (severity 0) to 5 (severity 1), 4:2:0 chroma."""
    n, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    xp = F.pad(x.clamp(0, 1), (0, pw, 0, ph), mode="replicate") * 255
    r, gr, b = xp[:, 0], xp[:, 1], xp[:, 2]
    y = 0.299 * r + 0.587 * gr + 0.114 * b
    cb = -0.168736 * r - 0.331264 * gr + 0.5 * b
    cr = 0.5 * r - 0.418688 * gr - 0.081312 * b
    quality = (40 - 35 * s).clamp(1, 100)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality).view(-1, 1, 1, 1, 1)  # percent
    d = _dct_matrix(x.device)

    def code(plane: torch.Tensor, table: tuple) -> torch.Tensor:
        hh, ww = plane.shape[-2:]
        blocks = plane.reshape(n, hh // 8, 8, ww // 8, 8).permute(0, 1, 3, 2, 4) - 128
        q = ((torch.tensor(table, device=x.device, dtype=torch.float32).view(8, 8) * scale + 50) // 100).clamp(min=1)
        coef = d @ blocks @ d.T
        blocks = d.T @ (torch.round(coef / q) * q) @ d + 128
        return blocks.permute(0, 1, 3, 2, 4).reshape(n, hh, ww)

    y = code(y, _Q_LUMA)
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    cb2 = code(chroma[:, 0] + 128, _Q_CHROMA) - 128
    cr2 = code(chroma[:, 1] + 128, _Q_CHROMA) - 128
    up = F.interpolate(torch.stack([cb2, cr2], 1), scale_factor=2, mode="nearest")
    cb, cr = up[:, 0], up[:, 1]
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1) / 255
    return out[:, :, :h, :w]


# --- light ---------------------------------------------------------------------------------------
def brightness(x, s, g):
    sign = torch.where(torch.rand(len(x), generator=g, device=x.device) < 0.7, 1.0, -1.0).view(-1, 1, 1, 1)
    return x + sign * _lerp(s, 0.08, 0.5)


def contrast(x, s, g):
    c = _lerp(s, 0.7, 0.12)
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * c + mean


def saturation(x, s, g):
    grey = _grey(x)
    low = torch.rand(len(x), generator=g, device=x.device) < 0.5
    f = torch.where(low.view(-1, 1, 1, 1), _lerp(s, 0.6, 0.0), _lerp(s, 1.4, 3.0))
    return grey + (x - grey) * f


def dim(x, s, g):
    return contrast(x, s * 0.8, g) * _lerp(s, 0.9, 0.35)


def night(x, s, g):
    grey = _grey(x).clamp(0, 1) ** _lerp(s, 1.2, 3.0)
    grey = grey + torch.randn(grey.shape, generator=g, device=x.device) * _lerp(s, 0.01, 0.1)
    return grey.expand_as(x)


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
    a = _lerp(s, 0.3, 2.2)
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
    return _lerp(s, 0.95, 0.6) * x + _lerp(s, 0.3, 0.75) * ice


def snow(x, s, g):
    n, _, h, w = x.shape
    grey = _grey(x)
    keep = _lerp(s, 0.9, 0.55)
    x = keep * x + (1 - keep) * torch.maximum(x, grey * 1.5 + 0.5)
    cell = int(torch.randint(1, 3, (1,), generator=g, device=x.device))
    coarse = torch.rand(n, 1, h // cell, w // cell, generator=g, device=x.device)
    flakes = (coarse > (1 - _lerp(s, 0.005, 0.04))).float()
    flakes = F.interpolate(flakes, size=(h, w), mode="nearest")
    length = 3.0 + 10.0 * s
    angle = _rand(n, g, x.device, math.pi * 0.3, math.pi * 0.7)
    streaks = per_image_conv(flakes, line_kernels(length, angle, torch.full((n,), 0.5, device=x.device)))
    streaks = (streaks * length.view(-1, 1, 1, 1) * 0.8).clamp(0, 1)
    return x + streaks


# --- occlusion -----------------------------------------------------------------------------------
def occlude(x, s, g):
    """A rectangle over 8-40% of the frame: flat colour, noise, or a mirrored part of the image."""
    n, _, h, w = x.shape
    out = x.clone()
    frac = 0.08 + 0.32 * s
    aspect = torch.exp(_rand(n, g, x.device, math.log(0.5), math.log(2.0)))
    kind = torch.randint(0, 3, (n,), generator=g, device=x.device)
    u = torch.rand(n, 2, generator=g, device=x.device)
    colour = torch.rand(n, 3, generator=g, device=x.device)
    flipped = x.flip((2, 3))
    for i in range(n):
        ph = int(min(h, round(math.sqrt(float(frac[i]) * h * w / float(aspect[i])))))
        pw = int(min(w, round(float(frac[i]) * h * w / max(ph, 1))))
        top, left = int(float(u[i, 0]) * (h - ph)), int(float(u[i, 1]) * (w - pw))
        k = int(kind[i])
        if k == 0:
            out[i, :, top:top + ph, left:left + pw] = colour[i].view(3, 1, 1)
        elif k == 1:
            out[i, :, top:top + ph, left:left + pw] = torch.rand(3, ph, pw, generator=g, device=x.device)
        else:
            out[i, :, top:top + ph, left:left + pw] = flipped[i, :, top:top + ph, left:left + pw]
    return out


OPS: dict[str, Op] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise, "gaussian_blur": gaussian_blur, "defocus_blur": defocus_blur,
    "motion_blur": motion_blur, "zoom_blur": zoom_blur, "glass_blur": glass_blur, "elastic": elastic,
    "pixelate": pixelate, "low_resolution": low_resolution, "jpeg": jpeg, "brightness": brightness,
    "contrast": contrast, "saturation": saturation, "dim": dim, "night": night, "fog": fog,
    "frost": frost, "snow": snow, "occlude": occlude,
}


def colour_jitter(x: torch.Tensor, g: torch.Generator, strength: float = 0.3) -> torch.Tensor:
    """Mild per-image brightness, contrast and saturation changes (every training image)."""
    n = len(x)
    b = _rand(n, g, x.device, 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    c = _rand(n, g, x.device, 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    sat = _rand(n, g, x.device, 1 - strength, 1 + strength).view(-1, 1, 1, 1)
    x = x * b
    mean = _grey(x).mean((2, 3), keepdim=True)
    x = (x - mean) * c + mean
    grey = _grey(x)
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
