"""Model files: safetensors weights with plain JSON metadata, and the extras stored beside them.

Nothing here unpickles objects: loading a model never runs code. Training state for resume is
written by ``wildwatch.engine.checkpoint``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from wildwatch.errors import ModelFileError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

MODEL_FORMAT = "wildwatch-model/1"
MODEL_FILENAME = "model.safetensors"
EXTRA_PREFIX = "extra."
TRIU_SUFFIX = ".triu"  # a symmetric extra stored as its upper triangle


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """A model file's SHA-256 (computed once per file version in a process)."""
    st = Path(path).stat()
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime)


def atomic_write(path: Path, write) -> None:
    """Write through ``write(tmp_path)`` to a temporary file beside ``path``, then replace ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def resolve_model_path(path: str | Path) -> Path:
    """A run folder or a model folder → its ``model.safetensors``; a file → itself."""
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILENAME
    if not p.exists():
        raise ModelFileError(f"{path}: no model here (expected a .safetensors file or a run folder holding {MODEL_FILENAME})")
    return p


def metadata_copy_path(weights: Path) -> Path:
    """Where ``save_model`` writes the readable copy of a model file's metadata (a bundle's manifest
    names it; nothing reads it to load the model)."""
    return Path(weights).with_suffix(".json")


def save_model(
    path: str | Path,
    model: nn.Module,
    meta: dict[str, Any],
    only: set[str] | None = None,
    dtype: torch.dtype | None = None,
    extras: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the weights and metadata to ``path`` (a .safetensors file), atomically.

    ``only`` keeps just those state-dict keys (the rest must come from pretrained weights on
    load); ``dtype`` stores floating tensors compactly (e.g. fp16); ``extras`` are further
    named tensors (e.g. statistics for the unknown detector), stored under ``extra.``. A
    readable ``.json`` copy of the metadata is written beside it.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if only is not None:
        state = {k: v for k, v in state.items() if k in only}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    for k, v in (extras or {}).items():
        v = v.detach().cpu()
        if _symmetric(v):  # e.g. a precision matrix: the upper triangle is enough (half the bytes)
            k, v = k + TRIU_SUFFIX, v[tuple(torch.triu_indices(len(v), len(v)))]
        state[EXTRA_PREFIX + k] = v.contiguous()
    meta = {"format": MODEL_FORMAT, **meta, "stored_keys": "partial" if only is not None else "all"}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"wildwatch": json.dumps(meta)}))
    atomic_write(metadata_copy_path(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a model file, without building the model."""
    p = resolve_model_path(path)
    try:
        with safe_open(str(p), framework="numpy") as f:
            raw = (f.metadata() or {}).get("wildwatch")
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types, from Rust
        raise ModelFileError(f"{p}: not a readable safetensors file ({exc})") from None
    if raw is None:
        raise ModelFileError(f"{p}: no wildwatch metadata; is this a wildwatch model file?")
    meta = json.loads(raw)
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFileError(f"{p}: unsupported model format {meta.get('format')!r}")
    return meta


def _symmetric(t) -> bool:
    return t.ndim == 2 and t.shape[0] == t.shape[1] and t.shape[0] > 1 and bool((t == t.T).all())


def _from_triu(v: np.ndarray) -> np.ndarray:
    """The symmetric matrix whose upper triangle (row by row, diagonal included) is ``v``."""
    import numpy as np

    n = int(np.rint((np.sqrt(8 * len(v) + 1) - 1) / 2))
    if n * (n + 1) // 2 != len(v):
        raise ModelFileError(f"{len(v)} values are not the upper triangle of a square matrix")
    m = np.zeros((n, n), dtype=v.dtype)
    rows, cols = np.triu_indices(n)
    m[rows, cols] = v
    m[cols, rows] = v
    return m


def load_extras(path: str | Path) -> dict[str, np.ndarray]:
    """The extra arrays stored with a model (float32), by name. Needs no PyTorch."""
    import numpy as np

    p = resolve_model_path(path)
    out = {}
    with safe_open(str(p), framework="numpy") as f:
        for k in f.keys():  # noqa: SIM118 - a safetensors file handle is not a mapping: it has keys(), no iteration
            if not k.startswith(EXTRA_PREFIX):
                continue
            name, v = k[len(EXTRA_PREFIX):], np.asarray(f.get_tensor(k), dtype=np.float32)
            if name.endswith(TRIU_SUFFIX):
                name, v = name[: -len(TRIU_SUFFIX)], _from_triu(v)
            out[name] = v
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Build the architecture named in the metadata and load the stored weights into it.

    A partial file (head and fine-tuned layers only) starts from the architecture's pretrained
    weights, which come from an installed package, never from the network.
    """
    from wildwatch.models.registry import create_model

    p = resolve_model_path(path)
    meta = read_model_meta(p)
    partial = meta.get("stored_keys") == "partial"
    kwargs = dict(meta.get("model_kwargs", {}))
    if partial:
        kwargs["pretrained"] = True
    model = create_model(meta["architecture"], num_classes=len(meta["classes"]), **kwargs)
    with safe_open(str(p), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(EXTRA_PREFIX)}  # noqa: SIM118 - see load_extras
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unexpected or (missing and not partial):
        raise ModelFileError(
            f"{p}: weights do not match architecture {meta['architecture']!r} "
            f"(missing {missing[:3]}..., unexpected {unexpected[:3]}...)"
        )
    state = {k: v.to(own[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=not partial)
    model.to(device).eval()
    return model, meta
