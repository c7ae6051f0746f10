"""The Predictor: images in, Predictions out. One object for the CLI, the web service and the monitor."""

from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from wildwatch.data.discover import expand_paths
from wildwatch.data.loading import DEFAULT_MAX_PIXELS, ImageLoadError, load_photo, load_photo_bytes
from wildwatch.data.transforms import FastEvalTransform, Preprocess
from wildwatch.errors import require
from wildwatch.field import place_from_exif
from wildwatch.models.bundle import Bundle, load_bundle
from wildwatch.models.decision import Decision, Outputs, Verdict
from wildwatch.models.files import ModelFileError
from wildwatch.species import species_info

if TYPE_CHECKING:
    from wildwatch.inference.backends import Runner

def model_decision(meta: dict, path: Path | None = None) -> Decision:
    """The decision a model file carries. A pretrained-backbone file made before the decision lived in
    one place has no ``decision``: it would never call anything unknown, so it is refused."""
    if "decision" not in meta and meta.get("unknown"):
        raise ModelFileError(f"{path or 'model'}: made by an earlier wildwatch (no species/unknown decision in its "
                             "metadata); train it again with this version")
    return Decision.from_meta(meta)


@dataclass(frozen=True)
class Prediction:
    """What the model says about one image. ``error`` is set (and species empty) when it failed."""

    source: str
    species: str = ""
    confidence: float = 0.0
    top_k: tuple[dict, ...] = ()
    common_name: str = ""
    iucn_status: str = ""
    threatened: bool = False
    unknown: bool = False
    unknown_score: float | None = None
    error: str | None = None
    country: str | None = None
    out_of_range: bool = False
    top_k_original: tuple[dict, ...] = ()
    population: str = ""
    latitude: float | None = None
    longitude: float | None = None
    taken_at: str | None = None
    looks_like: str = ""  # when unknown: what the photo looks like instead, in plain words, if it is sure
    looks_like_kind: str = ""  # when unknown: animal, person, vehicle, scene or object
    note: str = ""  # a plain-words remark: out of range, an ignored GPS position
    uncertain: bool = False  # not sure enough to name one species: ``candidates`` names the two it is between
    candidates: tuple[str, ...] = ()

    @property
    def named(self) -> bool:
        """Whether the answer names one species (not unknown, not uncertain, not failed)."""
        return not (self.error or self.unknown or self.uncertain)

    def describe(self) -> str:
        """One line for people: the species, "leopard or jaguar?", or what the photo shows instead."""
        if self.error:
            return f"error: {self.error}"
        if self.uncertain:
            return f"{self.common_name}? ({self.confidence:.0%} sure of {species_info(self.candidates[0]).common_name})"
        if not self.unknown:
            return f"{self.common_name or self.species} ({self.confidence:.0%})"
        return "Not one of the 11 species — " + describe_other(self.looks_like, self.looks_like_kind)

    def to_json(self) -> dict:
        """The row as JSON values. A photo that could not be classified has its ``error`` and empty
        (null) answers: no confidence of 0.0, no "not unknown", for a photo nobody looked at. An unknown
        photo has no confidence and no top-k: the species' probabilities say nothing about a photo of
        none of them."""
        d = dataclasses.asdict(self)
        d["top_k"] = [dict(t) for t in self.top_k]
        d["top_k_original"] = [dict(t) for t in self.top_k_original]
        d["candidates"] = list(self.candidates)
        if self.error:
            d.update({k: None for k in FAILED_EMPTY})
        elif self.unknown:
            d.update(confidence=None, top_k=[])
        return d

    def to_row(self) -> dict:
        """Flat values for CSV (lists as JSON text)."""
        d = self.to_json()
        d["top_k"] = json.dumps(d["top_k"])
        d["top_k_original"] = json.dumps(d["top_k_original"]) if d["top_k_original"] else ""
        d["candidates"] = ",".join(d["candidates"])
        return d


ROW_FIELDS = [f.name for f in dataclasses.fields(Prediction)]
FAILED_EMPTY = ("confidence", "threatened", "unknown", "out_of_range", "uncertain")  # no answer for a photo that failed


def describe_other(name: str, kind: str) -> str:
    """What a photo of none of the 11 shows, in words: "looks like a tiger", "a person?", "no animal seen"."""
    if kind == "animal":
        return f"looks like {_article(name)}" if name else "an animal it does not know"
    if kind == "person":
        return "a person?"
    if kind == "vehicle":
        return f"a vehicle ({name})" if name else "a vehicle?"
    return f"no animal seen ({name})" if name else "no animal seen"


def _article(name: str) -> str:
    return ("an " if name[:1].lower() in "aeiou" else "a ") + name


def one_blas_thread():
    """numpy's BLAS on one thread while classifying: its idle threads spin, and on a small
    machine they take the cores that decoding and the model need (a third of the throughput on
    2 cores). The small matrix products of the decision gain nothing from more. The loaded BLAS
    libraries are looked up at each call (about 1 ms): one loaded since (scipy's, PyTorch's) is
    limited too."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().limit(limits=1, user_api="blas")


@dataclass
class Predictor:
    """A loaded model with its preprocessing and its decision (``wildwatch.models.decision``).

    The PyTorch model is built only when something needs it (the torch backend, an export,
    Grad-CAM): with an ONNX backend, classifying never imports PyTorch, which keeps start-up short.
    ``decision`` is the model file's own unless one is given (it can be swapped)."""

    meta: dict
    model_path: Path | None = None
    device: str = "cpu"
    top_k: int = 3
    runner: "Runner | None" = None
    country: str | None = None  # a fixed ISO country code for every photo, else EXIF GPS decides
    use_exif: bool = True
    decision: Decision | None = None
    _model: object = field(default=None, repr=False)

    def __post_init__(self):
        if self.decision is None:
            self.decision = model_decision(self.meta, self.model_path)

    @classmethod
    def from_file(cls, path: str | Path | Bundle | None = None, device: str = "cpu", top_k: int = 3,
                  backend: str = "auto", species_model: str | Path | None = None,
                  decision: Decision | None = None) -> "Predictor":
        """Load a model (``models.bundle.load_bundle``: ``None`` for the bundled model, a bundle's
        folder or manifest, a run folder or a model file) and pick a backend: ``torch``, ``onnx``
        (ONNX Runtime fp32), ``onnx-int8``, or ``auto`` (the fastest available).

        ``species_model`` (``"bundled"``: the bundled fine-tuned network; or a bundle: the species
        network its manifest names, else its weights) names the species, while this model still
        decides "unknown": robust to degraded photos, at twice the compute."""
        from wildwatch.inference.backends import make_runner, species_runner

        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        pred = cls(bundle.meta(), bundle.model_file, str(device), top_k, decision=decision)
        pred.runner = make_runner(backend, lambda: pred.model, bundle, pred.preprocess.image_size, pred.device)
        if species_model is not None:
            pred.runner = species_runner(pred.runner, pred.classes, species_model, backend, pred.device)
        return pred

    @property
    def model(self):
        """The PyTorch model (built and loaded on first use)."""
        if self._model is None:
            from wildwatch.models.files import load_model

            require("torch", "train", "the PyTorch model (the torch backend, Grad-CAM, ONNX export)")
            self._model, _ = load_model(self.model_path, self.device)
        return self._model

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
        own_t = self.runner.temperature if self.runner is not None else None
        own_u = self.runner.unknown_threshold if self.runner is not None else None
        if own_t is not None:
            d = dataclasses.replace(d, temperature=float(own_t))
        if own_u is not None:
            d = dataclasses.replace(d, unknown_threshold=float(own_u))
        return d

    def transform(self):
        return FastEvalTransform(self.preprocess)

    def forward(self, batch) -> Outputs:
        """The network's outputs for a normalised NCHW batch (numpy or a CPU tensor)."""
        if self.runner is None:
            from wildwatch.inference.backends import TorchRunner

            self.runner = TorchRunner(self.model, self.device)
        return self.runner(np.asarray(batch))

    def _top(self, p: np.ndarray) -> tuple[dict, ...]:
        order = np.argsort(-p)[: self.top_k]
        return tuple({"species": self.classes[j], "probability": round(float(p[j]), 5)} for j in order)

    def from_outputs(self, sources: Sequence[str], outputs: Outputs, places: Sequence | None = None) -> list[Prediction]:
        """Predictions from the network's outputs for a batch: the decision (with the place of each
        photo, ``field.Place``, where known) and the IUCN status."""
        from wildwatch.field import Place

        places = [places[i] if places is not None and places[i] is not None else Place() for i in range(len(sources))]
        if self.country:
            places = [dataclasses.replace(pl, country=self.country.upper(), country_source="given") for pl in places]
        decision = self.active_decision
        verdicts = decision.decide(outputs, [pl.country for pl in places])
        scores = None
        if outputs.unknown is not None and decision.unknown_threshold is not None:
            scores = np.exp(np.clip(np.asarray(outputs.unknown, np.float64) - decision.unknown_threshold, -50, 50))
        return [self._prediction(src, v, pl, None if scores is None else float(scores[i]))
                for i, (src, v, pl) in enumerate(zip(sources, verdicts, places))]

    def _prediction(self, src: str, v: Verdict, place, score: float | None) -> Prediction:
        """One row from a verdict: names, status (local where the place is known), place and notes."""
        from wildwatch.field import local_status

        classes = self.classes
        key = {"unknown": "unknown", "uncertain": "uncertain"}.get(v.kind, classes[v.top])
        info = species_info(key)
        candidates = tuple(classes[j] for j in v.candidates)
        common, status, threatened = info.common_name, info.iucn_status, info.threatened
        if v.kind == "uncertain":
            infos = [species_info(c) for c in candidates]
            common = " or ".join(i.common_name for i in infos)
            status = " or ".join(dict.fromkeys(i.iucn_status for i in infos))
            threatened = any(i.threatened for i in infos)
        local = local_status(key, place.country) if v.kind == "species" else None
        return Prediction(
            src, key, round(float(v.confidence if v.confidence is not None else v.probs.max()), 5), self._top(v.probs),
            common, local["status"] if local else status, threatened, v.kind == "unknown",
            None if score is None else round(score, 5), None, place.country, v.out_of_range, (),
            local["population"] if local else "", place.latitude, place.longitude, place.taken_at,
            v.looks_like, v.looks_like_kind, v.note or place.warning or "", v.kind == "uncertain", candidates)

    def read(self, source: str | Path | bytes, name: str | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, object]:
        """Decode one photo (a path, or the bytes of an upload named ``name``) as the model will
        see it: EXIF orientation applied, JPEGs drafted near the model's input size, and its place
        (``field.Place`` from EXIF GPS and time; None with ``use_exif`` off). Raises ImageLoadError."""
        draft = (self.preprocess.resize_size, self.preprocess.resize_size)
        if isinstance(source, (bytes, bytearray, memoryview)):
            img, exif = load_photo_bytes(bytes(source), name or "upload", max_pixels, draft)
        else:
            img, exif = load_photo(source, max_pixels, draft)
        return img, place_from_exif(exif) if self.use_exif else None

    def pixels(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The uint8 NHWC batch at the model's input size (resized and centre-cropped) of decoded images."""
        t = self.transform()
        return np.stack([t.uint8(im.convert("RGB")) for im in images])

    def outputs(self, pixels: np.ndarray) -> Outputs:
        """The network's outputs (species logits, open-set score, ImageNet logits) for a uint8 NHWC
        batch at the model's input size: what evaluation and benchmarks score."""
        with one_blas_thread():
            return self.forward(self.transform().normalise(pixels))

    def predict_batch(self, pixels: np.ndarray, sources: Sequence[str] | None = None,
                      places: Sequence | None = None) -> list[Prediction]:
        """Classify a uint8 NHWC batch already at the model's input size (as ``pixels`` makes it,
        or a benchmark's degraded copies of it)."""
        if len(pixels) == 0:
            return []
        sources = list(sources) if sources is not None else [f"image{i}" for i in range(len(pixels))]
        with one_blas_thread():
            return self.from_outputs(sources, self.outputs(pixels), places)

    def predict_images(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None,
                       places: Sequence | None = None) -> list[Prediction]:
        """Classify decoded RGB images; ``places`` (field.Place per image) adds where and when."""
        if not images:
            return []
        return self.predict_batch(self.pixels(images), sources, places)

    def refine_with_tiles(self, images: Sequence[Image.Image], preds: list[Prediction], grid: int = 3,
                          min_confidence: float = 0.6) -> list[Prediction]:
        """A second look for small animals (a CCTV frame, a wide camera-trap shot): where the whole
        image gave no confident answer (unknown, uncertain, or below ``min_confidence``), classify
        ``grid`` x ``grid`` overlapping tiles, each half the width and height of the image, and take
        the most confident tile that names a species, if it reaches ``min_confidence``. Confident
        answers on the whole image are kept as they are."""
        if grid < 2:
            return list(preds)
        out = list(preds)
        todo = [i for i, p in enumerate(preds) if not p.error and (not p.named or p.confidence < min_confidence)]
        if not todo:
            return out
        tiles, owner = [], []
        for i in todo:
            img = images[i].convert("RGB")
            w, h = img.size
            tw, th = w / 2, h / 2
            for r in range(grid):
                for c in range(grid):
                    left, top = c * (w - tw) / (grid - 1), r * (h - th) / (grid - 1)
                    tiles.append(img.crop((round(left), round(top), round(left + tw), round(top + th))))
                    owner.append(i)
        tile_preds: list[Prediction] = []
        for k in range(0, len(tiles), 32):
            tile_preds += self.predict_images(tiles[k:k + 32], [preds[owner[j]].source for j in range(k, min(k + 32, len(tiles)))])
        best: dict[int, Prediction] = {}
        for i, tp in zip(owner, tile_preds):
            if tp.named and tp.confidence >= min_confidence and (i not in best or tp.confidence > best[i].confidence):
                best[i] = tp
        for i, tp in best.items():
            out[i] = dataclasses.replace(tp, country=preds[i].country, latitude=preds[i].latitude,
                                         longitude=preds[i].longitude, taken_at=preds[i].taken_at)
        return out

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int | None = None,
                      workers: int | None = None) -> Iterator[Prediction]:
        """Classify files and folders (recursively), in input order, one Prediction per file.

        A file that cannot be read gets a Prediction with ``error`` set; the batch goes on.
        With ONNX Runtime, each of ``workers`` threads (default: one per core) decodes a batch and
        runs it on a single-threaded session, so decoding and inference overlap without starving
        each other; with PyTorch, decoding threads feed the next batch while the model runs. At
        most a few batches are held in memory, whatever the number of files.
        """
        if batch_size is None:
            batch_size = self.runner.batch_size
        with one_blas_thread():
            yield from self._predict_paths(paths, batch_size, workers)

    def _predict_paths(self, paths, batch_size: int, workers: int | None) -> Iterator[Prediction]:
        import os

        workers = workers or os.cpu_count() or 1
        files = expand_paths(paths)
        t = self.transform()

        def decode(p: Path):
            try:
                img, place = self.read(p)
                x = t.uint8(img)
            except ImageLoadError as exc:
                return None, str(exc), None
            return x, None, place

        def chunks() -> Iterator[list[Path]]:
            buf: list[Path] = []
            for f in files:
                buf.append(f)
                if len(buf) == batch_size:
                    yield buf
                    buf = []
            if buf:
                yield buf

        if self.runner.per_core:
            # the session (and ONNX Runtime's import) is built while the first batches decode
            with ThreadPoolExecutor(1) as starter:
                single = starter.submit(self.runner.single_threaded)

                def work(chunk: list[Path]) -> list[Prediction]:
                    decoded = [decode(p) for p in chunk]
                    return self._finish(chunk, decoded, t, single.result())

                yield from self._run_windowed(chunks(), work, workers)
            return

        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending = None
            for chunk in chunks():
                future = (chunk, [pool.submit(decode, p) for p in chunk])
                if pending is not None:
                    yield from self._finish(pending[0], [f.result() for f in pending[1]], t)
                pending = future
            if pending is not None:
                yield from self._finish(pending[0], [f.result() for f in pending[1]], t)

    @staticmethod
    def _run_windowed(chunks: Iterator[list[Path]], work, workers: int) -> Iterator[Prediction]:
        """``work`` on each chunk, ``workers`` at a time, results in input order; at most
        ``workers + 1`` chunks are in flight, whatever the number of files."""
        from collections import deque

        with ThreadPoolExecutor(workers) as pool:
            window: deque = deque()
            for chunk in chunks:
                window.append(pool.submit(work, chunk))
                if len(window) > workers:
                    yield from window.popleft().result()
            while window:
                yield from window.popleft().result()

    def _finish(self, chunk: list[Path], decoded: list, t: FastEvalTransform, runner=None) -> list[Prediction]:
        ok = [i for i, (x, _, _) in enumerate(decoded) if x is not None]
        preds: dict[int, Prediction] = {}
        if ok:
            batch = t.normalise(np.stack([decoded[i][0] for i in ok]))
            places = [decoded[i][2] for i in ok]
            outputs = runner(batch) if runner is not None else self.forward(batch)
            for i, p in zip(ok, self.from_outputs([str(chunk[i]) for i in ok], outputs, places)):
                preds[i] = p
        return [preds.get(i) or Prediction(str(chunk[i]), error=decoded[i][1]) for i in range(len(chunk))]
