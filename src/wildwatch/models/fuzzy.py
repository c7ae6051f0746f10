"""Fuzzy pooling layers: drop-in replacements for ``nn.MaxPool2d`` (no padding, floor mode).

Any window size is vectorised with ``unfold``: every k x k patch of every channel becomes a row,
and the pooling rule is computed on all rows at once. The 2x2, stride-2 windows of the seed CNNs
take a closed form on the four strided views of the input instead (no unfold, no sort), and on
the CPU one C++ loop per layer (``wildwatch.models.fuzzy_native``) where a compiler is at hand; all
paths compute the same function. All are differentiable almost everywhere (the
choice of which values to keep is piecewise constant, as in max pooling).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from wildwatch.models import fuzzy_native

SIGMA_EPS = 1e-4


def _patches(x: torch.Tensor, kernel: int, stride: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """[N, C, H, W] → [N*C*L, k*k] rows of patch values, and the output shape (N, C, Ho, Wo)."""
    n, c, h, w = x.shape
    ho, wo = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"input {h}x{w} is smaller than the pooling kernel {kernel}")
    cols = F.unfold(x.reshape(n * c, 1, h, w), kernel, stride=stride)  # [N*C, k*k, L]
    return cols.transpose(1, 2).reshape(-1, kernel * kernel), (n, c, ho, wo)


def fuzzy_type2_rows(v: torch.Tensor) -> torch.Tensor:
    """Type-2 fuzzy pooling of each row of ``v`` ([R, n] → [R]); see ``FuzzyPool2d``."""
    n = v.shape[1]
    h = math.ceil(n / 2)
    s, _ = torch.sort(v, dim=1)
    cs = torch.cat([torch.zeros_like(s[:, :1]), s.cumsum(1)], 1)  # cs[:, j] = sum of the j smallest
    k = torch.arange(1, h + 1, device=v.device)
    kept = (n - 2 * (k - 1)).to(v.dtype)
    kmm = (cs[:, n - k + 1] - cs[:, k - 1]) / kept  # [R, h]: k-th middle means
    sigma = (v - v.mean(1, keepdim=True)).abs().mean(1, keepdim=True) + SIGMA_EPS
    pi = torch.exp(-0.5 * ((v[:, :, None] - kmm[:, None, :]) / sigma[:, :, None]) ** 2)  # [R, n, h]
    tau = pi.amax(2).amin(1, keepdim=True)  # lower bound of the footprint of uncertainty
    pi_bar = pi.mean(2)  # [R, n]
    w = pi_bar * (pi_bar >= tau).to(v.dtype)
    empty = w.sum(1, keepdim=True) <= 0
    w = torch.where(empty, pi_bar, w)
    return (w * v).sum(1) / w.sum(1)


def fuzzy_type1_rows(v: torch.Tensor) -> torch.Tensor:
    """Type-1 fuzzy pooling of each row of ``v`` ([R, n] → [R]); see ``FuzzyPool2dType1``."""
    lo = v.amin(1, keepdim=True)
    hi = v.amax(1, keepdim=True)
    r = hi - lo
    flat = r <= 0
    r = torch.where(flat, torch.ones_like(r), r)
    t = (v - lo) / r  # position in the patch's range, 0..1
    c = 1.0 / 3.0
    d = 0.5
    small = torch.clamp((d - t) / c, 0, 1)  # 1 up to d-c, falls to 0 at d (trapezoid)
    medium = torch.clamp(1 - (t - d).abs() / c, 0, 1)  # triangle peaking at d, zero beyond d±c
    large = torch.clamp((t - d) / c, 0, 1)  # 0 up to d, 1 from d+c (trapezoid)
    mu = torch.stack([small, medium, large], 1)  # [R, 3, n]
    best = mu.sum(2).argmax(1)  # the fuzzy set with the largest total membership
    m = mu[torch.arange(len(v), device=v.device), best]  # [R, n]
    out = (m * v).sum(1) / m.sum(1).clamp_min(1e-12)
    return torch.where(flat[:, 0], v[:, 0], out)


def _views_2x2(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four values of every 2x2 window (stride 2, floor mode) as four strided views of ``x``,
    in the order ``unfold`` gives them (top-left, top-right, bottom-left, bottom-right)."""
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    if h < 2 or w < 2:
        raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is smaller than the pooling kernel 2")
    x = x[..., :h, :w]
    return x[..., 0::2, 0::2], x[..., 0::2, 1::2], x[..., 1::2, 0::2], x[..., 1::2, 1::2]


def fuzzy_type2_2x2(x: torch.Tensor) -> torch.Tensor:
    """``fuzzy_type2_rows`` for 2x2 windows with stride 2, in closed form on the four strided views
    stacked as V [4, ...]: with n = 4 there are two k-middle means, the mean and the mean of the
    two middle values (sum − max − min) / 2, so nothing is sorted or unfolded. Every step is an
    elementwise operation or a reduction over the four values, which autograd differentiates and
    ``torch.compile`` fuses."""
    V = torch.stack(_views_2x2(x))
    total = V.sum(0)
    mean = total * 0.25
    mid = (total - V.amax(0) - V.amin(0)) * 0.5
    d1 = V - mean
    inv = 1.0 / (d1.abs().mean(0) + SIGMA_EPS)
    z1 = d1 * inv
    z2 = z1 + (mean - mid) * inv  # (v - mid) / σ
    q1, q2 = z1 * z1, z2 * z2
    bar = (torch.exp(-0.5 * q1) + torch.exp(-0.5 * q2)) * 0.5  # π̄ = mean of the two memberships
    # τ = min over the window of max over k of π_k = exp(-½ max over the window of min over k of q_k)
    tau = torch.exp(-0.5 * torch.minimum(q1, q2).amax(0))
    w = torch.where(bar >= tau, bar, torch.zeros_like(bar))
    w = torch.where(w.sum(0) > 0, w, bar)  # none passes: all count
    return (w * V).sum(0) / w.sum(0)


def fuzzy_type1_2x2(x: torch.Tensor) -> torch.Tensor:
    """``fuzzy_type1_rows`` for 2x2 windows with stride 2, on the four strided views stacked as V."""
    V = torch.stack(_views_2x2(x))
    lo, hi = V.amin(0), V.amax(0)
    r = hi - lo
    flat = r <= 0
    t = (V - lo) / torch.where(flat, torch.ones_like(r), r)
    c, d = 1.0 / 3.0, 0.5
    small = torch.clamp((d - t) / c, 0, 1)
    medium = torch.clamp(1 - (t - d).abs() / c, 0, 1)
    large = torch.clamp((t - d) / c, 0, 1)
    s_tot, m_tot, l_tot = small.sum(0), medium.sum(0), large.sum(0)
    # the set with the largest total membership; ties go to the first (small, then medium), as argmax
    pick_small = (s_tot >= m_tot) & (s_tot >= l_tot)
    pick_medium = ~pick_small & (m_tot >= l_tot)
    mu = torch.where(pick_small, small, torch.where(pick_medium, medium, large))
    out = (mu * V).sum(0) / mu.sum(0).clamp_min(1e-12)
    return torch.where(flat, V[0], out)


class _FuzzyPool(nn.Module):
    rows_fn = staticmethod(fuzzy_type2_rows)
    fast_2x2 = staticmethod(fuzzy_type2_2x2)
    native_kind = "type2"

    def __init__(self, kernel_size: int = 2, stride: int | None = None, native: bool = True):
        super().__init__()
        self.kernel_size = int(kernel_size)
        self.stride = int(stride) if stride is not None else self.kernel_size
        self.native = native  # 2x2 windows on the CPU: the C++ loop of fuzzy_native when it is built

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kernel_size == 2 and self.stride == 2:  # the seed CNNs' pooling: the closed form, no unfold
            if self.native and fuzzy_native.usable(x):
                return fuzzy_native.pool_2x2(x, self.native_kind)
            return self.fast_2x2(x)
        rows, (n, c, ho, wo) = _patches(x, self.kernel_size, self.stride)
        return self.rows_fn(rows).reshape(n, c, ho, wo)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class FuzzyPool2d(_FuzzyPool):
    """Type-2 fuzzy pooling (T. Sharma, V. Singh, S. Sudhakaran, N. K. Verma, "Fuzzy based Pooling
    in Convolutional Neural Network for Image Classification", FUZZ-IEEE 2019).

    For each channel and each p x p patch with values x (n = p² of them):

    - sort the patch; for k = 1..h, h = ⌈n/2⌉, the k-th middle mean kmm_k is the mean of the values
      left after trimming k-1 from each end (kmm_1 is the mean, kmm_h the median);
    - v_avg = mean(x); σ = mean|x - v_avg| + 1e-4;
    - memberships π_k(x) = exp(-½((x - kmm_k)/σ)²): h embedded type-1 sets whose union is the
      footprint of uncertainty of an interval type-2 set;
    - threshold τ = min over x of max over k of π_k(x) (the lower bound of that footprint);
    - π̄(x) = mean over k of π_k(x);
    - output Σ π̄(x)·x over the x with π̄(x) ≥ τ, divided by Σ π̄(x) over the same x (all x when
      none passes).

    A uniform patch returns its value.
    """

    rows_fn = staticmethod(fuzzy_type2_rows)


class FuzzyPool2dType1(_FuzzyPool):
    """Type-1 fuzzy pooling (D. E. Diamantis, D. K. Iakovidis, "Fuzzy Pooling", IEEE Transactions on
    Fuzzy Systems 29(11), 2021).

    Each patch's values are mapped onto its own range t = (x - min)/(max - min) and given three
    memberships: "small" (trapezoid: 1 up to t = 1/6, 0 from t = 1/2), "medium" (triangle: 0 at
    t = 1/6, 1 at t = 1/2, 0 at t = 5/6) and "large" (trapezoid: 0 up to t = 1/2, 1 from 5/6).
    The fuzzy set with the largest total membership Σπ over the patch is kept, and the output is
    its centroid Σπ(x)·x / Σπ(x). A uniform patch returns its value. (The paper spreads the
    membership functions over the activation range [0, r_max]; using each patch's own range keeps
    the layer free of a hand-set r_max.)
    """

    rows_fn = staticmethod(fuzzy_type1_rows)
    fast_2x2 = staticmethod(fuzzy_type1_2x2)
    native_kind = "type1"
