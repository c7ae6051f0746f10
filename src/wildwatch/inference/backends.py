"""Inference backends: PyTorch eager, or ONNX Runtime on an exported copy of the model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from wildwatch.errors import ModelFileError, NeedsExtraError, UnknownNameError
from wildwatch.models.bundle import Bundle, OnnxFile, bundled, load_bundle
from wildwatch.models.decision import Outputs
from wildwatch.models.files import file_sha256
from wildwatch.models.interface import SpeciesNetwork, as_network

if TYPE_CHECKING:
    from torch import nn

BACKENDS = ("auto", "torch", "onnx", "onnx-int8")


class Runner(Protocol):
    """What the Predictor runs a normalised NCHW float32 batch on."""

    name: str  # the backend, as users see it: torch, onnx, onnx-int8, onnx-int8+species
    batch_size: int  # the batch size it runs fastest at
    unknown_threshold: float | None  # its own unknown-detector threshold (an int8 file's), else None
    temperature: float | None  # its own calibration (a separate species network's), else None
    species_digest: str | None  # which separate species network it runs, if any
    per_core: bool  # whether ``single_threaded`` gives a runner to run one batch per core on

    def __call__(self, batch: np.ndarray) -> Outputs:
        """(species logits, open-set score or None, ImageNet logits or None)."""

    def single_threaded(self) -> Runner:
        """A runner on one core (only called when ``per_core``)."""


OUTPUT_NAMES = ("logits", "unknown", "imagenet")  # an exported file's outputs, as far as the model has them


def _outputs(model: nn.Module) -> nn.Module:
    """A module giving the outputs the model has, in ``OUTPUT_NAMES`` order (the logits alone for a seed CNN)."""
    from torch import nn

    class NetworkOutputs(nn.Module):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model: SpeciesNetwork = as_network(model)

        def forward(self, x):
            outs = tuple(o for o in self.model.predict_outputs(x) if o is not None)
            return outs[0] if len(outs) == 1 else outs

    return NetworkOutputs(model)


def output_names(model: nn.Module) -> list[str]:
    """The names of the outputs ``_outputs(model)`` gives (what an exported file calls them)."""
    import torch

    with torch.no_grad():
        outs = as_network(model.eval()).predict_outputs(torch.zeros(1, 3, 32, 32))
    return [n for n, o in zip(OUTPUT_NAMES, outs) if o is not None]


def cache_dir() -> Path:
    """Where exported ONNX files are kept: $WILDWATCH_CACHE or ~/.cache/wildwatch."""
    return Path(os.environ.get("WILDWATCH_CACHE", Path.home() / ".cache" / "wildwatch"))


def file_digest(path: Path) -> str:
    """A short name for a model file's version (the start of its SHA-256)."""
    return file_sha256(path)[:16]


def export_model_onnx(model: nn.Module, out: Path, image_size: int) -> Path:
    """Export the model (species logits, open-set score, ImageNet logits) with a dynamic batch, in one file."""
    from wildwatch.inference.onnx_export import export_onnx

    return export_onnx(_outputs(model), out, image_size, output_names=output_names(model))


def ort_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session using all cores unless told otherwise."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or os.cpu_count() or 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning worker threads would starve the threads that decode the next batch.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _on_cpu(device) -> bool:
    return str(device).split(":")[0] == "cpu"


class TorchRunner:
    name = "torch"
    unknown_threshold: float | None = None
    temperature: float | None = None
    species_digest: str | None = None
    per_core = False  # PyTorch runs one batch at a time on all cores; decoding threads feed it

    def __init__(self, model: nn.Module, device):
        self.model: SpeciesNetwork = as_network(model)
        self.device = device
        # PyTorch eager runs this kind of network faster in small batches on a CPU (cache-bound)
        self.batch_size = 4 if _on_cpu(device) else 32

    def __call__(self, batch: np.ndarray) -> Outputs:
        import torch

        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)
            logits, unknown, imagenet = self.model.predict_outputs(x)
        return Outputs(_numpy(logits), None if unknown is None else _numpy(unknown),
                       None if imagenet is None else _numpy(imagenet))

    def single_threaded(self) -> TorchRunner:
        """Itself: PyTorch runs a batch on all cores (``per_core`` is False)."""
        return self


def _numpy(t) -> np.ndarray:
    return t.float().cpu().numpy()


class OnnxRunner:
    temperature: float | None = None
    species_digest: str | None = None
    per_core = True

    def __init__(self, onnx_path: Path, name: str = "onnx", threads: int | None = None,
                 unknown_threshold: float | None = None):
        import threading

        self.name = name
        self.path = onnx_path
        self.threads = threads
        # classify runs one single-threaded session per core; batches of 8 measured about 5% more
        # photos/s than 32 for int8 (the same for fp32) at half the peak memory
        self.batch_size = 8
        if not Path(onnx_path).is_file():
            raise FileNotFoundError(f"{onnx_path}: no such ONNX file")
        # sessions are made on first use: a command that only needs the single-threaded one
        # (classify) does not pay for building the other
        self._session: Any = None  # an onnxruntime.InferenceSession
        self._lock = threading.Lock()
        self._single: OnnxRunner | None = None
        # an int8 file's own unknown threshold (its features move a little), from its export report
        self.unknown_threshold = unknown_threshold

    def single_threaded(self) -> OnnxRunner:
        """A second session on one core, for running several batches at once (one per core):
        no parallel-for barrier is left waiting while other threads decode photos."""
        with self._lock:
            if self._single is None:
                single = OnnxRunner(self.path, self.name, threads=1, unknown_threshold=self.unknown_threshold)
                _ = single.session  # built now, before the worker threads share it
                self._single = single
            return self._single

    @property
    def session(self):
        with self._lock:
            if self._session is None:
                self._session = ort_session(self.path, self.threads)
                self.input = self._session.get_inputs()[0].name
                self.names = [o.name for o in self._session.get_outputs()]
            return self._session

    def __call__(self, batch: np.ndarray) -> Outputs:
        session = self.session
        outs = dict(zip(self.names, session.run(None, {self.input: np.ascontiguousarray(batch, dtype=np.float32)})))
        if "unknown" not in outs:  # a file with the species logits alone (or from an earlier version)
            return Outputs(next(iter(outs.values())))
        return Outputs(outs["logits"], outs["unknown"], outs.get("imagenet"))


class DualRunner:
    """Species from one network, the open-set score and ImageNet logits from another, on the same batch.

    A network fine-tuned end to end on degraded photos names species better (and holds up under
    blur, noise, weather and night light) but pulls other animals towards the known species; the
    frozen ImageNet trunk of the main model keeps them apart. ``temperature`` is the species
    network's own calibration."""

    def __init__(self, main: Runner, species: Runner, temperature: float, species_digest: str | None = None):
        self.main, self.species, self.own_temperature = main, species, float(temperature)
        self.temperature: float | None = self.own_temperature
        self.species_digest = species_digest  # which species network: part of a benchmark's settings
        self.name = f"{main.name}+species"
        self.unknown_threshold = main.unknown_threshold
        self.batch_size = main.batch_size
        self.per_core = main.per_core and species.per_core
        self._single: DualRunner | None = None

    def single_threaded(self) -> DualRunner:
        if self._single is None:
            self._single = DualRunner(self.main.single_threaded(), self.species.single_threaded(),
                                      self.own_temperature, self.species_digest)
        return self._single

    def __call__(self, batch: np.ndarray) -> Outputs:
        main = self.main(batch)
        return Outputs(self.species(batch).logits, main.unknown, main.imagenet)


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def make_runner(backend: str, model: Callable[[], nn.Module], bundle: Bundle, image_size: int,
                device: str = "cpu") -> Runner:
    """Build the runner for ``backend`` from the files of ``bundle``; ``model`` gives the PyTorch
    model when one is needed (it is not built when an ONNX file already exists). An fp32 ONNX file
    the bundle does not name is exported once per model file and cached; an int8 file must have been
    made with ``wildwatch export --int8`` (it needs calibration photos), which names it in the
    bundle's manifest."""
    if backend not in BACKENDS:
        raise UnknownNameError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    on_cpu = _on_cpu(device)
    if backend == "auto":
        if onnx_available() and on_cpu and bundle.int8 is not None and int8_is_accurate(bundle.int8.report()):
            return int8_runner(bundle.int8)
        if not (onnx_available() and on_cpu):
            return TorchRunner(model(), device)
        try:
            return make_runner("onnx", model, bundle, image_size, device)
        except Exception as exc:  # noqa: BLE001 - a failed export must not stop the batch: PyTorch answers the same
            import warnings

            warnings.warn(f"ONNX Runtime backend unavailable ({exc}); using PyTorch")
            return TorchRunner(model(), device)
    if backend == "torch":
        return TorchRunner(model(), device)
    if not onnx_available():
        raise NeedsExtraError("the onnx backends need onnxruntime: pip install onnxruntime")
    if backend == "onnx-int8":
        if bundle.int8 is None:
            raise FileNotFoundError(f"{bundle.model_file}: no int8 model yet; make it with: wildwatch export "
                                    f"--model {bundle.model_file} --int8 --data DIR")
        return int8_runner(bundle.int8)
    path = fp32_file(bundle)
    if not path.exists():
        export_model_onnx(model(), path, image_size)
    return OnnxRunner(path, "onnx")


def int8_runner(f: OnnxFile, name: str = "onnx-int8") -> OnnxRunner:
    """An int8 file with its own unknown threshold (from its export report)."""
    return OnnxRunner(f.path, name, unknown_threshold=f.report().get("unknown_threshold"))


def fp32_file(bundle: Bundle) -> Path:
    """The bundle's fp32 ONNX file, else the cache's copy of its weights (exported on first use)."""
    return bundle.fp32 or cache_dir() / f"{file_digest(bundle.model_file)}_fp32.onnx"


def species_runner(main: Runner, classes: list[str], species_model: str | Path, backend: str = "auto",
                   device: str = "cpu") -> DualRunner:
    """A DualRunner: species from ``species_model``, the open-set score and ImageNet logits from
    ``main``. ``species_model``: ``"bundled"`` (the bundled model's species network), or a bundle:
    the species network its manifest names, else its own weights (a model file or run folder)."""
    bundle = bundled() if str(species_model) == "bundled" else load_bundle(species_model)
    if bundle.species is not None:
        net = bundle.species
        if net.report_path is None:
            raise ModelFileError(f"{bundle.manifest}: its species network {net.path.name} has no export report "
                                 "named with it (classes and temperature)")
        info = net.report()
        if info.get("temperature") is None:
            raise ModelFileError(f"{net.report_path}: no temperature; export the species model again with "
                                 "wildwatch export --int8")
        theirs, temperature, file = info.get("classes"), info["temperature"], net.path
        runner: Runner = OnnxRunner(net.path, "species-int8")
    elif str(species_model) == "bundled":
        raise ModelFileError(f"{bundle.manifest}: the bundled model names no species network")
    else:
        theirs, temperature, runner = _own_network(bundle, backend, device)
        file = bundle.model_file
    if theirs != classes:
        raise ModelFileError(f"{species_model}: its classes {theirs} are not the model's {classes}")
    return DualRunner(main, runner, temperature, file_digest(file))


def _own_network(bundle: Bundle, backend: str, device: str) -> tuple[list[str], float, Runner]:
    """(classes, temperature, runner) of a bundle's own weights, as a species network."""
    from wildwatch.data.transforms import Preprocess
    from wildwatch.models.decision import Decision
    from wildwatch.models.files import load_model

    meta = bundle.meta()
    runner = make_runner(backend, lambda: load_model(bundle.model_file, device)[0], bundle,
                         Preprocess.from_json(meta["preprocess"]).image_size, device)
    return list(meta["classes"]), Decision.from_meta(meta).temperature, runner


MAX_INT8_LOSS_POINTS = 0.3
MAX_INT8_AUROC_LOSS = 0.01


def int8_is_accurate(report: dict) -> bool:
    """True when an int8 file's export report shows at most 0.3 points of accuracy lost on the
    validation and test photos together and, where it was measured, the open-set score's AUROC at
    most 0.01 lower than with fp32."""
    change = report.get("int8_accuracy_change_points")
    if change is None or change < -MAX_INT8_LOSS_POINTS:
        return False
    return report.get("int8_unknown_auroc_change", 0.0) >= -MAX_INT8_AUROC_LOSS
