"""Export models (or their frozen trunk) to ONNX; ``backends`` runs them with ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn


class Trunk(nn.Module):
    """The frozen part of an EfficientNet-Lite: stem and all blocks."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(x)


def export_onnx(module: nn.Module, path: str | Path, image_size: int, dynamo: bool = True) -> Path:
    """Export with a dynamic batch dimension into one file. The module is put in eval mode
    (and left there: the exporter would otherwise switch BatchNorm back to training)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # written beside, then renamed: processes that export the same model at once never read half a file
    path = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    module = module.eval()
    x = torch.randn(2, 3, image_size, image_size)
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["output"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False)
        else:
            torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=["output"],
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False)
    module.eval()
    os.replace(path, final)
    return final


def stamp_metadata(path: str | Path, values: dict) -> None:
    """Write wildwatch's facts into an ONNX file's metadata (``metadata_props``, keys
    ``wildwatch.*``, JSON values), so the file alone says what its outputs mean: class names,
    preprocessing, temperature, unknown threshold. ONNX Runtime reads them back with
    ``session.get_modelmeta().custom_metadata_map``."""
    import json

    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    keep = [p for p in model.metadata_props if not p.key.startswith("wildwatch.")]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"wildwatch.{key}", json.dumps(value)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def onnx_metadata(pred, unknown_threshold: float | None = None) -> dict:
    """What ``stamp_metadata`` writes for a Predictor's model."""
    from wildwatch import __version__

    return {"classes": pred.classes, "preprocess": pred.meta["preprocess"], "temperature": pred.temperature,
            "unknown_threshold": unknown_threshold if unknown_threshold is not None else pred.unknown_threshold,
            "architecture": pred.meta.get("architecture"), "version": __version__,
            "outputs": ["logits (softmax(logits / temperature) gives the probabilities of classes)",
                        "features of the unknown detector (Mahalanobis distance to class means)"],
            "input": "float32 NCHW, RGB, resized and centre-cropped, then (x / 255 - mean) / std of preprocess"}
