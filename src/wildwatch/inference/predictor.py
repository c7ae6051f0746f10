"""The Predictor: a loaded model, its runner and its options, in two parts (one object for the CLI,
the web service and the monitor).

- ``answers``, a ``postprocess.PostProcess``: the network's outputs → Predictions (the decision,
  names, top-k, IUCN and local status). Pure: no I/O.
- ``pipeline``, a ``pipeline.FilePipeline``: photos → batches on the runner → ``answers`` (discovery
  once per call, decoding, threads, batching, tiles).

A Predictor is built complete (``Predictor.from_file``: the country of the photos, EXIF use and top-k
are arguments) and never changes; ``dataclasses.replace`` makes another with other options (another
runner, decision or country) around the same loaded model.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from wildwatch.data.loading import DEFAULT_MAX_PIXELS
from wildwatch.data.transforms import FastEvalTransform, Preprocess
from wildwatch.errors import UsageError, require
from wildwatch.field import Place
from wildwatch.inference.pipeline import FilePipeline, Places
from wildwatch.inference.postprocess import PostProcess
from wildwatch.inference.prediction import Prediction
from wildwatch.models.bundle import Bundle, load_bundle
from wildwatch.models.decision import Decision, Outputs
from wildwatch.models.files import ModelFileError

if TYPE_CHECKING:
    from torch import nn

    from wildwatch.inference.backends import Runner


def model_decision(meta: dict, path: Path | None = None) -> Decision:
    """The decision a model file carries. A pretrained-backbone file made before the decision lived in
    one place has no ``decision``: it would never call anything unknown, so it is refused."""
    if "decision" not in meta and meta.get("unknown"):
        raise ModelFileError(f"{path or 'model'}: made by an earlier wildwatch (no species/unknown decision in its "
                             "metadata); train it again with this version")
    return Decision.from_meta(meta)


class LazyModel:
    """The PyTorch model of a model file, built and loaded on first use (the torch backend, an export,
    Grad-CAM): with an ONNX backend, classifying never imports PyTorch, which keeps start-up short."""

    def __init__(self, path: Path | None, device: str):
        self.path, self.device = path, device
        self._model: nn.Module | None = None
        self._lock = threading.Lock()

    def __call__(self) -> nn.Module:
        with self._lock:
            if self._model is None:
                from wildwatch.models.files import load_model

                require("torch", "train", "the PyTorch model (the torch backend, Grad-CAM, ONNX export)")
                if self.path is None:
                    raise ModelFileError("this predictor has no model file to build the PyTorch model from")
                self._model, _ = load_model(self.path, self.device)
            return self._model


@dataclass(frozen=True, eq=False)
class Predictor:
    """A loaded model with its runner, its decision (``wildwatch.models.decision``; the model file's
    own unless another is given) and its options: ``top_k`` species per row, a fixed ISO ``country``
    for every photo (else each photo's EXIF GPS decides), ``use_exif``."""

    meta: dict[str, Any]
    runner: Runner
    decision: Decision
    model_path: Path | None = None
    device: str = "cpu"
    top_k: int = 3
    country: str | None = None
    use_exif: bool = True
    species_list: frozenset[str] | None = None
    torch_model: LazyModel | None = field(default=None, repr=False)
    answers: PostProcess = field(init=False, repr=False)
    pipeline: FilePipeline = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.torch_model is None:
            object.__setattr__(self, "torch_model", LazyModel(self.model_path, self.device))
        if self.species_list is not None and not self.species_list <= set(self.meta["classes"]):
            raise UsageError(f"--species: {', '.join(sorted(self.species_list - set(self.meta['classes'])))} not "
                             f"among the model's classes ({', '.join(self.meta['classes'])})")
        answers = PostProcess(tuple(self.meta["classes"]), self.active_decision, self.top_k, self.country,
                              self.species_list)
        object.__setattr__(self, "answers", answers)
        object.__setattr__(self, "pipeline", FilePipeline(self.runner, self.preprocess, answers, self.use_exif))

    @classmethod
    def from_file(cls, path: str | Path | Bundle | None = None, device: str = "cpu", top_k: int = 3,
                  backend: str = "auto", species_model: str | Path | None = None,
                  decision: Decision | None = None, country: str | None = None,
                  use_exif: bool = True, species_list: frozenset[str] | None = None) -> Predictor:
        """Load a model (``models.bundle.load_bundle``: ``None`` for the bundled model, a bundle's
        folder or manifest, a run folder or a model file) and pick a backend: ``torch``, ``onnx``
        (ONNX Runtime fp32), ``onnx-int8``, or ``auto`` (the fastest available).

        ``species_model`` (``"bundled"``: the bundled fine-tuned network; or a bundle: the species
        network its manifest names, else its weights) names the species, while this model still
        decides "unknown": robust to degraded photos, at twice the compute. ``species_list``: the
        species this run names (``--species``); others are unknown, with ``off_list`` saying which."""
        from wildwatch.inference.backends import make_runner, species_runner

        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        meta, device = bundle.meta(), str(device)
        model = LazyModel(bundle.model_file, device)
        runner = make_runner(backend, model, bundle, Preprocess.from_json(meta["preprocess"]).image_size, device)
        if species_model is not None:
            runner = species_runner(runner, list(meta["classes"]), species_model, backend, device)
        return cls(meta, runner, decision or model_decision(meta, bundle.model_file), bundle.model_file, device,
                   top_k, country, use_exif, species_list, model)

    @property
    def model(self) -> nn.Module:
        """The PyTorch model (built and loaded on first use)."""
        assert self.torch_model is not None  # set by __post_init__
        return self.torch_model()

    @property
    def backend(self) -> str:
        return self.runner.name

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_json(self.meta["preprocess"])

    @property
    def temperature(self) -> float:
        """The calibration of the network that gives the species (a species model's own, if set)."""
        return self.active_decision.temperature

    @property
    def unknown_threshold(self) -> float | None:
        """Open-set scores above this are "unknown": the decision's, or the backend's own (an int8 file's)."""
        return self.active_decision.unknown_threshold

    @property
    def active_decision(self) -> Decision:
        """The decision as this backend runs it: an int8 file's own threshold, a species network's own temperature."""
        d = self.decision
        if self.runner.temperature is not None:
            d = dataclasses.replace(d, temperature=float(self.runner.temperature))
        if self.runner.unknown_threshold is not None:
            d = dataclasses.replace(d, unknown_threshold=float(self.runner.unknown_threshold))
        return d

    def transform(self) -> FastEvalTransform:
        return self.pipeline.transform

    def forward(self, batch: np.ndarray) -> Outputs:
        """The network's outputs for a normalised NCHW batch (numpy or a CPU tensor)."""
        return self.pipeline.forward(batch)

    def from_outputs(self, sources: Sequence[str], outputs: Outputs, places: Places | None = None) -> list[Prediction]:
        """Predictions from the network's outputs for a batch: the decision (with the place of each
        photo, ``field.Place``, where known) and the IUCN status."""
        return self.answers(sources, outputs, places)

    def read(self, source: str | Path | bytes, name: str | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, Place | None]:
        """Decode one photo as the model will see it, and its place (``FilePipeline.read``)."""
        return self.pipeline.read(source, name, max_pixels)

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The uint8 NHWC batch at the model's input size of decoded images."""
        return self.pipeline.pixels(images)

    def outputs(self, pixels: np.ndarray) -> Outputs:
        """The network's outputs for a uint8 NHWC batch at the model's input size."""
        return self.pipeline.outputs(pixels)

    def predict_batch(self, pixels: np.ndarray, sources: Sequence[str] | None = None,
                      places: Places | None = None) -> list[Prediction]:
        """Classify a uint8 NHWC batch already at the model's input size."""
        return self.pipeline.predict_batch(pixels, sources, places)

    def predict_images(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None,
                       places: Places | None = None) -> list[Prediction]:
        """Classify decoded RGB images; ``places`` (field.Place per image) adds where and when."""
        return self.pipeline.predict_images(images, sources, places)

    def refine_with_tiles(self, images: Sequence[Image.Image], preds: list[Prediction], grid: int = 3,
                          min_confidence: float = 0.6) -> list[Prediction]:
        """A second look at tiles where the whole image gave no confident answer (``FilePipeline``)."""
        return self.pipeline.refine_with_tiles(images, preds, grid, min_confidence)

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int | None = None,
                      workers: int | None = None) -> Iterator[Prediction]:
        """Classify files and folders (recursively), in input order, one Prediction per file."""
        return self.pipeline.predict_paths(paths, batch_size, workers)

    def predict_files(self, files: Iterable[Path], batch_size: int | None = None,
                      workers: int | None = None) -> Iterator[Prediction]:
        """Classify files already found (no folder expansion), in input order."""
        return self.pipeline.predict_files(files, batch_size, workers)
