"""Export models (or their frozen trunk) to ONNX; ``backends`` runs them with ONNX Runtime."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn


def export_onnx(module: nn.Module, path: str | Path, image_size: int, dynamo: bool = True,
                output_names: list[str] | None = None) -> Path:
    """Export with a dynamic batch dimension into one file, its outputs named ``output_names`` (default:
    one ``output``). The module is put in eval mode (and left there: the exporter would otherwise switch
    BatchNorm back to training)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # written beside, then renamed: processes that export the same model at once never read half a file
    path = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    module = module.eval()
    x = torch.randn(2, 3, image_size, image_size)
    names = list(output_names or ["output"])
    quiet = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=names,
                              dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True, external_data=False)
        else:
            torch.onnx.export(module, (x,), str(path), input_names=["input"], output_names=names,
                              dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False)
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


def onnx_metadata(pred, decision=None) -> dict:
    """What ``stamp_metadata`` writes for a Predictor's model: with the file's outputs, these reproduce
    wildwatch's answer (``wildwatch.models.decision``) without wildwatch."""
    from wildwatch import __version__

    decision = decision or pred.decision
    return {"classes": pred.classes, "preprocess": pred.meta["preprocess"], "temperature": decision.temperature,
            "unknown_threshold": decision.unknown_threshold, "decision": decision.to_meta(),
            "architecture": pred.meta.get("architecture"), "version": __version__,
            "outputs": {"logits": "species logits; softmax(logits / temperature) gives the probabilities of classes",
                        "unknown": "open-set score: above unknown_threshold the photo shows none of the classes",
                        "imagenet": "logits of the backbone's ImageNet-1k classifier: what an unknown photo looks like"},
            "rules": "unknown if unknown > unknown_threshold; else confidence = sigmoid(calibration[:3] . "
                     "(logit p1, log p1/p2, unknown) + calibration[3]) with p = softmax(logits / temperature) "
                     "in float64, sorted (p1 >= p2), p1 clipped to [1e-9, 1 - 1e-9], or p1 without a calibration; "
                     "uncertain (the top two) below uncertain_below; else the top class",
            "input": "float32 NCHW, RGB, resized and centre-cropped, then (x / 255 - mean) / std of preprocess"}
