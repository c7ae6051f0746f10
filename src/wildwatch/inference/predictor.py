"""The Predictor: images in, Predictions out. One object for the CLI, the web service and the monitor."""

from __future__ import annotations

import dataclasses
import functools
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from wildwatch.data.discover import expand_paths
from wildwatch.data.loading import DEFAULT_MAX_PIXELS, ImageLoadError, load_photo, load_photo_bytes
from wildwatch.data.transforms import FastEvalTransform, Preprocess
from wildwatch.errors import require
from wildwatch.field import place_from_exif
from wildwatch.inference import unknown as ood
from wildwatch.models.files import load_extras, read_model_meta
from wildwatch.models.imagenet import ImageNetHead
from wildwatch.models.open_set import OpenSet, combiner_features, looks_like
from wildwatch.reports.metrics import softmax
from wildwatch.species import species_info

if TYPE_CHECKING:
    from wildwatch.inference.backends import Runner

BUNDLED_SPECIES = "resources/bundled_species.int8.onnx"
BUNDLED_MODEL = "resources/bundled_model.safetensors"
# Outside the range table's countries, a photo-only answer at least this sure stays (and is flagged
# as out of range: a zoo, a market, a trafficked animal); a less sure one is re-ranked among the
# species that live there.
PHOTO_SURE = 0.9
OUT_OF_RANGE_NOTE = "outside its wild range: captive or traded?"


def bundled_species_path() -> Path:
    """The bundled species network: EfficientNet-Lite0 fine-tuned end to end on degraded photos,
    as an int8 ONNX file (its export report, with classes and temperature, beside it)."""
    return Path(str(resources.files("wildwatch").joinpath(BUNDLED_SPECIES)))


def species_runner(pred: "Predictor", species_model: str | Path, backend: str = "auto"):
    """A DualRunner: species from ``species_model``, unknown features from ``pred``'s runner."""
    from wildwatch.inference.backends import DualRunner, OnnxRunner, file_digest
    from wildwatch.models.files import ModelFileError, resolve_model_path

    src = bundled_species_path() if str(species_model) == "bundled" else Path(species_model)
    if src.suffix == ".onnx":
        report = src.with_suffix(".json")
        if not report.exists():
            raise ModelFileError(f"{src}: no export report ({report.name}) beside it with classes and temperature")
        info = json.loads(report.read_text())
        if info.get("temperature") is None:
            raise ModelFileError(f"{report}: no temperature; export the species model again with wildwatch export --int8")
        classes, temperature, runner, file = info.get("classes"), info["temperature"], OnnxRunner(src, "species-int8"), src
    else:
        file = resolve_model_path(src)
        other = Predictor.from_file(file, device=pred.device, backend=backend)
        classes, temperature, runner = other.classes, other.temperature, other.runner
    if classes != pred.classes:
        raise ModelFileError(f"{src}: its classes {classes} are not the model's {pred.classes}")
    return DualRunner(pred.runner, runner, temperature, file_digest(file))


def bundled_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(str(resources.files("wildwatch").joinpath(BUNDLED_MODEL)))


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
    looks_like: str = ""  # when unknown: the ImageNet class the photo most looks like, if it is sure
    looks_like_kind: str = ""  # when unknown: animal, person, vehicle, scene or object
    note: str = ""  # a plain-words remark: out of range, an ignored GPS position

    def describe(self) -> str:
        """One line for people: the species, or what the photo shows instead."""
        if self.error:
            return f"error: {self.error}"
        if not self.unknown:
            return f"{self.common_name or self.species} ({self.confidence:.0%})"
        return "Not one of the 11 species — " + describe_other(self.looks_like, self.looks_like_kind)

    def to_json(self) -> dict:
        """The row as JSON values. A photo that could not be classified has its ``error`` and empty
        (null) answers: no confidence of 0.0, no "not unknown", for a photo nobody looked at."""
        d = dataclasses.asdict(self)
        d["top_k"] = [dict(t) for t in self.top_k]
        d["top_k_original"] = [dict(t) for t in self.top_k_original]
        if self.error:
            d.update({k: None for k in FAILED_EMPTY})
        return d

    def to_row(self) -> dict:
        """Flat values for CSV (lists as JSON text)."""
        d = self.to_json()
        d["top_k"] = json.dumps(d["top_k"])
        d["top_k_original"] = json.dumps(d["top_k_original"]) if d["top_k_original"] else ""
        return d


ROW_FIELDS = [f.name for f in dataclasses.fields(Prediction)]
FAILED_EMPTY = ("confidence", "threatened", "unknown", "out_of_range")  # no answer for a photo that failed


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


@functools.lru_cache(maxsize=1)
def _thread_pools():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finds the loaded BLAS libraries once (numpy's is loaded by now)


def one_blas_thread():
    """numpy's BLAS on one thread while classifying: its idle threads spin, and on a small
    machine they take the cores that decoding and the model need (a third of the throughput on
    2 cores). The small matrix products of the unknown detector gain nothing from more."""
    return _thread_pools().limit(limits=1, user_api="blas")


@dataclass
class Predictor:
    """A loaded model with its preprocessing, temperature and unknown detector.

    The PyTorch model is built only when something needs it (the torch backend, an export,
    Grad-CAM): with an ONNX backend, classifying never imports PyTorch, which keeps start-up short."""

    meta: dict
    model_path: Path | None = None
    extras: dict = field(default_factory=dict)
    device: str = "cpu"
    top_k: int = 3
    runner: "Runner | None" = None
    country: str | None = None  # a fixed ISO country code for every photo, else EXIF GPS decides
    use_exif: bool = True
    _model: object = field(default=None, repr=False)
    _mahalanobis: object = field(default=None, repr=False)
    _open_set: object = field(default=None, repr=False)

    @classmethod
    def from_file(cls, path: str | Path | None = None, device: str = "cpu", top_k: int = 3,
                  backend: str = "auto", species_model: str | Path | None = None) -> "Predictor":
        """Load a model file or run folder (``None``: the bundled model) and pick a backend:
        ``torch``, ``onnx`` (ONNX Runtime fp32), ``onnx-int8``, or ``auto`` (the fastest available).

        ``species_model`` (``"bundled"``: the bundled fine-tuned network; or a model file, run
        folder or int8 ONNX file with its export report beside it) names the species, while this
        model still decides "unknown": robust to degraded photos, at twice the compute."""
        from wildwatch.inference.backends import make_runner
        from wildwatch.models.files import resolve_model_path

        path = resolve_model_path(bundled_model_path() if path is None else path)
        pred = cls(read_model_meta(path), path, load_extras(path), str(device), top_k)
        pred.runner = make_runner(backend, lambda: pred.model, path, pred.preprocess.image_size, pred.device)
        if species_model is not None:
            pred.runner = species_runner(pred, species_model, backend)
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
        own = self.runner.temperature if self.runner is not None else None
        return float(own) if own is not None else float(self.meta.get("temperature", 1.0))

    @property
    def unknown_threshold(self) -> float | None:
        """Scores above this are "unknown": the model's, or the backend's own (an int8 file's)."""
        own = self.runner.unknown_threshold if self.runner is not None else None
        return own if own is not None else (self.meta.get("unknown") or {}).get("threshold")

    def transform(self):
        return FastEvalTransform(self.preprocess)

    def forward(self, batch) -> tuple[np.ndarray, np.ndarray | None]:
        """(logits, unknown-detector features or None) for a normalised NCHW batch (numpy or a CPU tensor)."""
        if self.runner is None:
            from wildwatch.inference.backends import TorchRunner

            self.runner = TorchRunner(self.model, self.device)
        return self.runner(np.asarray(batch))

    def unknown_scores(self, logits: np.ndarray, feats: np.ndarray | None) -> np.ndarray | None:
        spec = self.meta.get("unknown") or {}
        method = spec.get("method")
        if method == "mahalanobis" and feats is not None and "ood_means" in self.extras:
            if self._mahalanobis is None:
                self._mahalanobis = ood.Mahalanobis(self.extras["ood_means"], self.extras["ood_precision"])
            return self._mahalanobis(feats)
        if method == "energy":
            return ood.energy_score(logits, self.temperature)
        if method == "msp":
            return ood.msp_score(logits, self.temperature)
        return None

    @property
    def open_set(self) -> tuple[ImageNetHead, OpenSet] | None:
        """The ImageNet classifier and the thresholds of its evidence, when the model file has them."""
        if self._open_set is None:
            head, rule = ImageNetHead.from_extras(self.extras), OpenSet.from_extras(self.extras)
            self._open_set = (head, rule) if head is not None and rule is not None else ()
        return self._open_set or None

    def open_set_scores(self, logits: np.ndarray, feats: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(unknown score, ImageNet probabilities) per photo. With the open-set decision the score is the
        learned decision on the Mahalanobis distance and the ImageNet evidence, or the largest of the parts
        each over its threshold (``wildwatch.models.open_set``), so 1.0 is the threshold; without it, the
        raw detector score."""
        scores = self.unknown_scores(logits, feats)
        parts = self.open_set
        if parts is None or scores is None or feats is None or self.unknown_threshold is None:
            return scores, None
        q = parts[0](feats)
        return parts[1].unknown(scores / self.unknown_threshold, q, logits.argmax(1),
                                softmax(logits, self.temperature)), q

    def combiner_inputs(self, logits: np.ndarray, feats: np.ndarray) -> np.ndarray | None:
        """The inputs of the learned open-set decision (``open_set.combiner_features``) for raw outputs, or
        None when the model has no open-set decision: what refitting that decision on other photos needs."""
        scores, parts = self.unknown_scores(logits, feats), self.open_set
        if parts is None or scores is None or self.unknown_threshold is None:
            return None
        return combiner_features(scores / self.unknown_threshold, parts[0](feats), logits.argmax(1),
                                 softmax(logits, self.temperature), parts[1])

    def decision_threshold(self) -> float | None:
        """What ``open_set_scores`` are compared with: 1.0 with the open-set decision, else the detector's threshold."""
        return 1.0 if self.open_set is not None else self.unknown_threshold

    def _top(self, p: np.ndarray) -> tuple[dict, ...]:
        order = np.argsort(-p)[: self.top_k]
        return tuple({"species": self.classes[j], "probability": round(float(p[j]), 5)} for j in order)

    def from_outputs(self, sources: Sequence[str], logits: np.ndarray, feats: np.ndarray | None,
                     places: Sequence | None = None) -> list[Prediction]:
        """Predictions from the runner's outputs (logits, unknown-detector features) for a batch:
        temperature, the open-set decision, place (``field.Place`` per photo) and IUCN status."""
        from wildwatch.field import Place, local_status, possible_in

        probs = softmax(logits, self.temperature)
        scores, q = self.open_set_scores(logits, feats)
        threshold = self.decision_threshold()
        classes = self.classes
        out = []
        for i, src in enumerate(sources):
            place = places[i] if places is not None and places[i] is not None else Place()
            if self.country:
                place = dataclasses.replace(place, country=self.country.upper(), country_source="given")
            p = probs[i]
            top, original, out_of_range, note = self._top(p), (), False, place.warning or ""
            score = None if scores is None else float(scores[i])
            is_unknown = bool(score is not None and threshold is not None and score > threshold)
            if place.country and not is_unknown:
                possible = np.array([possible_in(c, place.country) is not False for c in classes])
                if not possible[int(p.argmax())]:
                    out_of_range = True
                    note = OUT_OF_RANGE_NOTE
                    if possible.any() and float(p.max()) < PHOTO_SURE:
                        # not sure from the photo alone: re-rank among the species that live there,
                        # keeping what the photo alone said
                        original = top
                        p = p * possible / max(float((p * possible).sum()), 1e-12)
                        top = self._top(p)
                        note = f"re-ranked among the species of {place.country}: the photo alone said {original[0]['species']}"
            best = classes[int(p.argmax())]
            key = "unknown" if is_unknown else best
            seen, kind = ("", "")
            if is_unknown and q is not None:
                seen, kind, _ = looks_like(q[i:i + 1])[0]
            info = species_info(key)
            local = local_status(key, place.country) if not is_unknown else None
            out.append(Prediction(
                src, key, round(float(p.max()), 5), top, info.common_name,
                local["status"] if local else info.iucn_status, info.threatened, is_unknown,
                None if score is None else round(score, 5), None, place.country, out_of_range, original,
                local["population"] if local else "", place.latitude, place.longitude, place.taken_at,
                seen, kind, note))
        return out

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

    def outputs(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The runner's raw outputs (logits, unknown-detector features or None) for a uint8 NHWC
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
            return self.from_outputs(sources, *self.outputs(pixels), places)

    def predict_images(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None,
                       places: Sequence | None = None) -> list[Prediction]:
        """Classify decoded RGB images; ``places`` (field.Place per image) adds where and when."""
        if not images:
            return []
        return self.predict_batch(self.pixels(images), sources, places)

    def refine_with_tiles(self, images: Sequence[Image.Image], preds: list[Prediction], grid: int = 3,
                          min_confidence: float = 0.6) -> list[Prediction]:
        """A second look for small animals (a CCTV frame, a wide camera-trap shot): where the whole
        image gave no confident answer (unknown, or below ``min_confidence``), classify
        ``grid`` x ``grid`` overlapping tiles, each half the width and height of the image, and take
        the most confident tile that is not unknown, if it reaches ``min_confidence``. Confident
        answers on the whole image are kept as they are."""
        if grid < 2:
            return list(preds)
        out = list(preds)
        todo = [i for i, p in enumerate(preds) if not p.error and (p.unknown or p.confidence < min_confidence)]
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
            if not tp.unknown and tp.confidence >= min_confidence and (i not in best or tp.confidence > best[i].confidence):
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
            for i, p in zip(ok, self.from_outputs([str(chunk[i]) for i in ok], *outputs, places)):
                preds[i] = p
        return [preds.get(i) or Prediction(str(chunk[i]), error=decoded[i][1]) for i in range(len(chunk))]
