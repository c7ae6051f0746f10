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
