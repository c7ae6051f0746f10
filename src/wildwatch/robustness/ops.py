"""The corruption library: each degradation wildwatch applies to photos, written once.

Training on the CPU (``augment.Degrade``), fine-tuning on the device (``batch_degrade.BatchDegrade``)
and the robustness benchmark (``corruptions``) all degrade through these functions; each caller
only chooses the parameters (training draws them from ``ranges``, the benchmark reads its severity
tables) and draws the randomness (numpy's generators on the CPU paths, torch's on the device), which
is passed in, so the same function serves all three.

Images are batches ``x`` of shape (N, 3, H, W), float in [0, 1], on any device; parameters are one
per image. ``from_uint8`` and ``to_uint8`` take a photo (H, W, 3) ``uint8`` there and back. The
operations return values that may leave [0, 1]; the caller clamps (``to_uint8`` does).

- resampling (``resize``) follows Pillow's rules (filter support, centres, rounding); with
  ``uint8_steps`` it also reproduces Pillow's 8-bit fixed-point passes, so a photo resized here
  equals ``PIL.Image.resize`` pixel for pixel;
- JPEG is the real codec (Pillow's libjpeg) on the CPU paths, and ``jpeg_dct``, the codec's 8x8 DCT
  quantisation with the standard tables, on the device;
- motion blur is a convolution with a line: ``motion_kernel`` (a 1-pixel line, the benchmark's and
  the CPU training's) or ``line_kernels`` (anti-aliased, optionally one-sided, the device's).
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# --- photos ↔ batches ----------------------------------------------------------------------------


def from_uint8(a: np.ndarray) -> torch.Tensor:
    """(H, W, 3) ``uint8`` → (1, 3, H, W) float32 in [0, 1]."""
    return torch.from_numpy(np.array(a, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) → (H, W, 3) ``uint8``, clipped to [0, 1] and rounded."""
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def grey(x: torch.Tensor) -> torch.Tensor:
    """Luma (ITU-R 601), shape (N, 1, H, W)."""
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


# --- resampling ----------------------------------------------------------------------------------
_PRECISION = 22  # Pillow's fixed-point bits for 8-bit images


def _box(t: torch.Tensor) -> torch.Tensor:
    return ((t > -0.5) & (t <= 0.5)).to(t.dtype)


def _bilinear(t: torch.Tensor) -> torch.Tensor:
    return (1 - t.abs()).clamp(min=0)


def _bicubic(t: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    t = t.abs()
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = (((t - 5) * t + 8) * t - 4) * a
    return torch.where(t < 1, near, torch.where(t < 2, far, torch.zeros_like(t)))


_FILTERS = {"box": (_box, 0.5), "bilinear": (_bilinear, 1.0), "bicubic": (_bicubic, 2.0)}


def _nearest_matrix(n_in: int, n_out: int) -> torch.Tensor:
    # Pillow steps through the source by adding the scale, so its rounding is reproduced step by step.
    step, pos, index = n_in / n_out, n_in / n_out * 0.5, []
    for _ in range(n_out):
        index.append(min(int(pos), n_in - 1))
        pos += step
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m[torch.arange(n_out), torch.tensor(index)] = 1
    return m


@lru_cache(maxsize=512)
def resample_matrix(n_in: int, n_out: int, kind: str) -> torch.Tensor:
    """(n_out, n_in) float64 weights resampling one axis as Pillow does (``box``, ``bilinear``,
    ``bicubic``, ``nearest``): the filter widens by the scale when reducing, and each row is
    normalised over the source pixels it covers. Cached: do not modify the result."""
    if kind == "nearest":
        return _nearest_matrix(n_in, n_out)
    fn, support = _FILTERS[kind]
    scale = n_in / n_out
    widen = max(scale, 1.0)
    support *= widen
    centre = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    first = torch.trunc(centre - support + 0.5).clamp(min=0)
    end = torch.trunc(centre + support + 0.5).clamp(max=n_in)
    j = torch.arange(n_in, dtype=torch.float64)
    covered = (j >= first[:, None]) & (j < end[:, None])
    w = fn((j - centre[:, None] + 0.5) / widen) * covered
    return w / w.sum(1, keepdim=True)


def _fixed_point(m: torch.Tensor) -> torch.Tensor:
    scaled = m * 2 ** _PRECISION
    return torch.where(m < 0, torch.trunc(scaled - 0.5), torch.trunc(scaled + 0.5))


def resize(x: torch.Tensor, size: tuple[int, int], kind: str, uint8_steps: bool = False) -> torch.Tensor:
    """``x`` (N, C, H, W) resized to ``size`` (height, width): width first, then height, as Pillow.

    ``uint8_steps``: round to 8 bits after each pass with Pillow's fixed-point weights, which gives
    exactly ``PIL.Image.resize`` on ``uint8`` photos (float64 holds those sums exactly)."""
    h, w = x.shape[-2:]
    out = (x.double() * 255).round() if uint8_steps else x
    for axis, n_in, n_out in ((-1, w, size[1]), (-2, h, size[0])):
        if n_in == n_out:
            continue
        m = resample_matrix(n_in, n_out, kind).to(x.device)
        if uint8_steps:
            m = _fixed_point(m)
        else:
            m = m.to(x.dtype)
        out = out @ m.T if axis == -1 else m @ out
        if uint8_steps:
            out = torch.floor((out + 2 ** (_PRECISION - 1)) / 2 ** _PRECISION).clamp(0, 255)
    return (out / 255).to(x.dtype) if uint8_steps else out


def low_resolution(x: torch.Tensor, px: float, up: str = "bicubic", uint8_steps: bool = False,
                   resampler: str = "pillow") -> torch.Tensor:
    """Down to ``px`` on the long side, back up with ``up``: a small, soft image.

    ``resampler``: ``pillow`` (``resize``: a box filter down; ``up`` is ``bicubic``, ``bilinear``
    or ``nearest``), or ``torch``, the built-in filters the device path was tuned with (area
    down; ``up`` is ``bicubic`` or ``bilinear``)."""
    h, w = x.shape[-2:]
    s = px / max(h, w)
    small_size = (max(1, round(h * s)), max(1, round(w * s)))
    if resampler == "torch":
        small = F.interpolate(x, size=small_size, mode="area")
        return F.interpolate(small, size=(h, w), mode=up, align_corners=False)
    return resize(resize(x, small_size, "box", uint8_steps), (h, w), up, uint8_steps)


# --- convolution and kernels ---------------------------------------------------------------------


def _symmetric_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Mirror padding that repeats the edge pixel (OpenCV's BORDER_REFLECT)."""
    w, h = x.shape[-1], x.shape[-2]
    x = torch.cat([x[..., :left].flip(-1), x, x[..., w - right:].flip(-1)], -1)
    return torch.cat([x[..., :top, :].flip(-2), x, x[..., h - bottom:, :].flip(-2)], -2)


def per_image_conv(x: torch.Tensor, kernels: torch.Tensor, border: str = "reflect") -> torch.Tensor:
    """Correlate image i with ``kernels[i]`` (N, k, k) on every channel, anchored at the kernel's
    centre (``k // 2``). ``border``: ``reflect`` (mirror without the edge pixel; replicate on
    images smaller than the kernel) or ``symmetric`` (mirror with it, as OpenCV's default)."""
    n, c, h, w = x.shape
    k = kernels.shape[-1]
    before, after = k // 2, (k - 1) // 2
    flat = x.reshape(1, n * c, h, w)
    if border == "symmetric":
        xp = _symmetric_pad(flat, before, after, before, after)
    else:
        mode = "reflect" if before < min(h, w) else "replicate"
        xp = F.pad(flat, (before, after, before, after), mode=mode)
    weight = kernels.to(x.dtype).repeat_interleave(c, 0).unsqueeze(1)
    return F.conv2d(xp, weight, groups=n * c).reshape(n, c, h, w)


def _grid(k: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(k, device=device, dtype=torch.float32) - k // 2
    return r.view(1, 1, k), r.view(1, k, 1)  # (x, y)


def gaussian_kernels(sigma: torch.Tensor) -> torch.Tensor:
    """Normalised Gaussian kernels, one per standard deviation in ``sigma`` (N,), out to 3 sigma."""
    k = 2 * math.ceil(3 * float(sigma.max())) + 1
    xs, ys = _grid(k, sigma.device)
    s = sigma.view(-1, 1, 1)
    ker = torch.exp(-(xs ** 2 + ys ** 2) / (2 * s ** 2))
    return ker / ker.sum((1, 2), keepdim=True)


def disk_kernels(radius: torch.Tensor) -> torch.Tensor:
    """Normalised discs with soft edges, one per radius (pixels)."""
    k = 2 * math.ceil(float(radius.max())) + 3
    xs, ys = _grid(k, radius.device)
    ker = (radius.view(-1, 1, 1) + 0.5 - torch.sqrt(xs ** 2 + ys ** 2)).clamp(0, 1)
    return ker / ker.sum((1, 2), keepdim=True)


def line_kernels(length: torch.Tensor, angle: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Anti-aliased segments of ``length`` pixels at ``angle`` (radians); ``offset`` in [0, 0.5]
    moves the segment from centred (0.5) to starting at the centre (0): a one-sided streak."""
    k = 2 * math.ceil(float(length.max())) + 3
    xs, ys = _grid(k, length.device)
    dx, dy = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    start = -(offset * length).view(-1, 1, 1)
    end = start + length.view(-1, 1, 1)
    t = (xs * dx + ys * dy).clamp(min=start, max=end)  # projection onto the segment, clipped
    d = torch.sqrt((xs - t * dx) ** 2 + (ys - t * dy) ** 2)
    ker = (1 - d).clamp(0, 1)
    return ker / ker.sum((1, 2), keepdim=True)


def motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised 1-pixel line of ``length`` pixels at ``angle_deg``, in a ``length``-wide square."""
    k = np.zeros((length, length), np.float32)
    c = (length - 1) / 2
    a = math.radians(angle_deg)
    for t in np.linspace(-c, c, 4 * length):
        k[round(c + t * math.sin(a)), round(c + t * math.cos(a))] = 1.0
    return k / k.sum()


# --- the operations ------------------------------------------------------------------------------


def gaussian_noise(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Sensor noise: ``noise`` is the caller's draw, already scaled (per-image standard deviation)."""
    return x + noise


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return per_image_conv(x, gaussian_kernels(sigma))


def motion_blur(x: torch.Tensor, kernels: torch.Tensor, border: str = "reflect") -> torch.Tensor:
    """Blur along a line (``motion_kernel`` or ``line_kernels``)."""
    return per_image_conv(x, kernels, border)


def night_ir(x: torch.Tensor, gamma: torch.Tensor | float, noise: torch.Tensor,
             uint8_steps: bool = False) -> torch.Tensor:
    """Grey, as an infra-red camera sees it, darkened by a gamma curve, plus sensor noise (the
    caller's draw, shape (N, 1, H, W) or (H, W), already scaled). ``uint8_steps`` (a photo on the
    CPU, one ``gamma``): grey weighed on the 8-bit values and the curve in numpy's float32, as the
    benchmark has always computed them; torch's power differs in the last bit, which moves a
    pixel by a level now and then and, on ties of the int8 model, a benchmark answer."""
    if not uint8_steps:
        return (grey(x).clamp(0, 1) ** gamma + noise).expand_as(x)
    g = (grey((x * 255).round()) / 255).cpu().numpy()
    curved = torch.from_numpy(np.power(g, np.float32(gamma))).to(x.device)
    return (curved + noise).expand_as(x)


def contrast(x: torch.Tensor, factor: torch.Tensor | float) -> torch.Tensor:
    """Contrast scaled by ``factor`` around each image's mean."""
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * factor + mean


def dim(x: torch.Tensor, contrast_factor: torch.Tensor | float, light: torch.Tensor | float) -> torch.Tensor:
    """Dim, flat light: less contrast, then less (or more) light."""
    return contrast(x, contrast_factor) * light


def occluder_size(fraction: float, aspect: float, h: int, w: int) -> tuple[int, int]:
    """(height, width) of a rectangle over ``fraction`` of an h x w frame, ``aspect`` = width / height."""
    ph = int(min(h, round(math.sqrt(fraction * h * w / aspect))))
    pw = int(min(w, round(fraction * h * w / max(ph, 1))))
    return ph, pw


def occlude(x: torch.Tensor, box: tuple[int, int, int, int], kind: int, colour: torch.Tensor | None = None,
            noise: torch.Tensor | None = None) -> torch.Tensor:
    """One image (3, H, W) with the ``box`` (top, left, height, width) covered: ``kind`` 0 a flat
    ``colour`` (3,), 1 the ``noise`` patch (3, height, width), 2 the image turned by 180 degrees."""
    top, left, ph, pw = box
    out = x.clone()
    if kind == 0:
        if colour is None:
            raise ValueError("a flat occluder (kind 0) needs its colour")
        out[:, top:top + ph, left:left + pw] = colour.view(3, 1, 1)
    elif kind == 1:
        if noise is None:
            raise ValueError("a noise occluder (kind 1) needs its noise patch")
        out[:, top:top + ph, left:left + pw] = noise
    else:
        out[:, top:top + ph, left:left + pw] = x.flip((1, 2))[:, top:top + ph, left:left + pw]
    return out


# --- JPEG ----------------------------------------------------------------------------------------


def jpeg(a: np.ndarray, quality: int) -> np.ndarray:
    """A ``uint8`` photo through the real codec (Pillow's libjpeg) at ``quality``."""
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


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


def _code_blocks(plane: torch.Tensor, table: tuple, scale: torch.Tensor) -> torch.Tensor:
    """Each 8x8 block of ``plane`` (N, H, W) through the DCT, quantised with ``table`` scaled by
    ``scale`` (percent, per image), and back."""
    n, hh, ww = plane.shape
    d = _dct_matrix(plane.device)
    blocks = plane.reshape(n, hh // 8, 8, ww // 8, 8).permute(0, 1, 3, 2, 4) - 128
    q = ((torch.tensor(table, device=plane.device, dtype=torch.float32).view(8, 8) * scale + 50) // 100).clamp(min=1)
    coef = d @ blocks @ d.T
    blocks = d.T @ (torch.round(coef / q) * q) @ d + 128
    return blocks.permute(0, 1, 3, 2, 4).reshape(n, hh, ww)


def jpeg_dct(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG on the device: 8x8 DCT quantisation at ``quality`` (per image), 4:2:0 chroma."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % 16, (-w) % 16
    xp = F.pad(x.clamp(0, 1), (0, pw, 0, ph), mode="replicate") * 255
    r, gr, b = xp[:, 0], xp[:, 1], xp[:, 2]
    y = 0.299 * r + 0.587 * gr + 0.114 * b
    cb = -0.168736 * r - 0.331264 * gr + 0.5 * b
    cr = 0.5 * r - 0.418688 * gr - 0.081312 * b
    quality = quality.clamp(1, 100)
    scale = torch.where(quality < 50, 5000 / quality, 200 - 2 * quality).view(-1, 1, 1, 1, 1)  # percent
    y = _code_blocks(y, _Q_LUMA, scale)
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)
    cb2 = _code_blocks(chroma[:, 0] + 128, _Q_CHROMA, scale) - 128
    cr2 = _code_blocks(chroma[:, 1] + 128, _Q_CHROMA, scale) - 128
    up = F.interpolate(torch.stack([cb2, cr2], 1), scale_factor=2, mode="nearest")
    cb, cr = up[:, 0], up[:, 1]
    out = torch.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], 1) / 255
    return out[:, :, :h, :w]
