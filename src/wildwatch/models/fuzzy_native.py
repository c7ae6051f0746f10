"""The 2x2, stride-2 fuzzy pooling layers as one C++ loop each (``fuzzy_2x2.cpp``), forward and backward.

The tensor expressions in ``wildwatch.models.fuzzy`` make about twenty passes over memory per
layer and autograd keeps their intermediates; the C++ loop reads each window once, computes the
same function and, in the backward pass, its gradient from the input alone (nothing is saved but
the input). The extension is compiled with the machine's C++ compiler the first time a fuzzy layer
runs (about a minute, then cached by PyTorch under ``~/.cache/torch_extensions``). Without a
compiler, or with ``WILDWATCH_FUZZY_NATIVE=0``, the layers use the tensor expressions: the same
results, slower.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("fuzzy_2x2.cpp")


@functools.lru_cache(maxsize=1)
def extension():
    """The compiled module, or None (no compiler, a failed build, or switched off)."""
    if os.environ.get("WILDWATCH_FUZZY_NATIVE", "1") == "0":
        return None
    # its import warns that a CPU-only machine has no CUDA runtime, which is no news here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    log.info("fuzzy pooling: loading the C++ kernel (compiled on first use, about a minute)")
    # built for this machine's vector instructions, so named after them: a home folder shared by machines
    # of different CPUs keeps one build per kind. First with glibc's vector exp (libmvec), then without.
    flags = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    errors = []
    for suffix, cflags, ldflags in (("v", ["-DWILDWATCH_MVEC"], ["-lmvec"]), ("s", [], [])):
        try:
            from torch.utils.cpp_extension import load

            return load(name=f"wildwatch_fuzzy_2x2_{_cpu_key()}{suffix}", sources=[str(SOURCE)],
                        extra_cflags=flags + cflags, extra_ldflags=["-fopenmp", *ldflags], verbose=False)
        except Exception as e:  # noqa: BLE001  a failed build leaves the tensor path: correct, only slower
            errors.append(str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__)
    log.warning("fuzzy pooling: the C++ kernel could not be built (%s); using the tensor path", "; ".join(errors))
    return None


def _cpu_key() -> str:
    import hashlib
    import platform

    flags = ""
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        pass
    return hashlib.sha256((platform.machine() + flags).encode()).hexdigest()[:10]


def available() -> bool:
    return extension() is not None


class _Pool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, kind: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.kind = kind
        return getattr(extension(), f"{kind}_forward")(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return getattr(extension(), f"{ctx.kind}_backward")(x, grad), None


def pool_2x2(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Type-2 (``kind="type2"``) or type-1 (``"type1"``) fuzzy pooling of a CPU tensor, 2x2 windows, stride 2."""
    if kind not in ("type1", "type2"):
        raise ValueError(f"unknown fuzzy pooling kind {kind!r}")
    if x.dim() != 4:
        raise ValueError(f"fuzzy pooling expects N x C x H x W, got {tuple(x.shape)}")
    if x.shape[-2] < 2 or x.shape[-1] < 2:
        raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is smaller than the pooling kernel 2")
    return _Pool2x2.apply(x, kind)


def usable(x: torch.Tensor) -> bool:
    """Whether ``x`` can take the C++ path: a 4-d floating CPU tensor outside a compiled graph, and a built kernel."""
    return (x.device.type == "cpu" and x.dim() == 4 and x.dtype in (torch.float32, torch.float64)
            and not torch.compiler.is_compiling() and available())
