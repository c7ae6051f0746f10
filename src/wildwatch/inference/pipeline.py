"""From photos to Predictions: decoding, batching, threads and tiles around one runner.

``FilePipeline`` reads photos (a path or an upload's bytes; EXIF turned, JPEGs drafted near the
model's input size, the place from EXIF GPS and time), crops them to uint8 batches, runs the batches
on its runner and hands the outputs to its post-processing step (``postprocess.PostProcess``), which
makes the Predictions. Folders are expanded once per call (``predict_paths``); ``predict_files``
takes files already found.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from wildwatch.data.discover import expand_paths
from wildwatch.data.loading import DEFAULT_MAX_PIXELS, ImageLoadError, load_photo, load_photo_bytes
from wildwatch.data.transforms import FastEvalTransform, Preprocess
from wildwatch.field import Place, place_from_exif
from wildwatch.inference.prediction import Prediction
from wildwatch.models.decision import Outputs

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from wildwatch.inference.backends import Runner

Places = Sequence["Place | None"]
Answer = Callable[[Sequence[str], Outputs, "Places | None"], list[Prediction]]
# a decoded photo: its uint8 crop, or None and the error; its place
Decoded = tuple["np.ndarray | None", "str | None", "Place | None"]
TILE_BATCH = 32


def one_blas_thread() -> AbstractContextManager:
    """numpy's BLAS on one thread while classifying: its idle threads spin, and on a small
    machine they take the cores that decoding and the model need (a third of the throughput on
    2 cores). The small matrix products of the decision gain nothing from more. The loaded BLAS
    libraries are looked up at each call (about 1 ms): one loaded since (scipy's, PyTorch's) is
    limited too."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController().limit(limits=1, user_api="blas")


@dataclass(frozen=True)
class FilePipeline:
    """Photos through ``runner`` and ``answer`` (the post-processing step), at ``preprocess``'s size.
    ``use_exif``: read each photo's place from its EXIF GPS and time."""

    runner: Runner
    preprocess: Preprocess
    answer: Answer
    use_exif: bool = True
    transform: FastEvalTransform = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transform", FastEvalTransform(self.preprocess))

    def read(self, source: str | Path | bytes, name: str | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, Place | None]:
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
        t = self.transform
        return np.stack([t.uint8(im.convert("RGB")) for im in images])

    def forward(self, batch: np.ndarray) -> Outputs:
        """The network's outputs for a normalised NCHW batch (numpy or a CPU tensor)."""
        return self.runner(np.asarray(batch))

    def outputs(self, pixels: np.ndarray) -> Outputs:
        """The network's outputs (species logits, open-set score, ImageNet logits) for a uint8 NHWC
        batch at the model's input size: what evaluation and benchmarks score."""
        with one_blas_thread():
            return self.forward(self.transform.normalise(pixels))

    def predict_batch(self, pixels: np.ndarray, sources: Sequence[str] | None = None,
                      places: Places | None = None) -> list[Prediction]:
        """Classify a uint8 NHWC batch already at the model's input size (as ``pixels`` makes it,
        or a benchmark's degraded copies of it)."""
        if len(pixels) == 0:
            return []
        sources = list(sources) if sources is not None else [f"image{i}" for i in range(len(pixels))]
        with one_blas_thread():
            return self.answer(sources, self.outputs(pixels), places)

    def predict_images(self, images: Sequence[Image.Image], sources: Sequence[str] | None = None,
                       places: Places | None = None) -> list[Prediction]:
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
        out = list(preds)
        todo = [i for i, p in enumerate(preds) if not p.error and (not p.named or p.confidence < min_confidence)]
        if grid < 2 or not todo:
            return out
        tiles, owner = [], []
        for i in todo:
            for tile in _tiles(images[i].convert("RGB"), grid):
                tiles.append(tile)
                owner.append(i)
        tile_preds: list[Prediction] = []
        for k in range(0, len(tiles), TILE_BATCH):
            sources = [preds[owner[j]].source for j in range(k, min(k + TILE_BATCH, len(tiles)))]
            tile_preds += self.predict_images(tiles[k:k + TILE_BATCH], sources)
        best: dict[int, Prediction] = {}
        for i, tp in zip(owner, tile_preds):
            if tp.named and tp.confidence >= min_confidence and (i not in best or tp.confidence > best[i].confidence):
                best[i] = tp
        for i, tp in best.items():
            out[i] = _replace_place(tp, preds[i])
        return out

    def predict_paths(self, paths: Iterable[str | Path], batch_size: int | None = None,
                      workers: int | None = None) -> Iterator[Prediction]:
        """Classify files and folders (recursively), in input order, one Prediction per file
        (``predict_files`` on what ``expand_paths`` finds)."""
        return self.predict_files(expand_paths(paths), batch_size, workers)

    def predict_files(self, files: Iterable[Path], batch_size: int | None = None,
                      workers: int | None = None) -> Iterator[Prediction]:
        """Classify files, in input order, one Prediction per file.

        A file that cannot be read gets a Prediction with ``error`` set; the batch goes on.
        With ONNX Runtime, each of ``workers`` threads (default: one per core) decodes a batch and
        runs it on a single-threaded session, so decoding and inference overlap without starving
        each other; with PyTorch, decoding threads feed the next batch while the model runs. At
        most a few batches are held in memory, whatever the number of files.
        """
        size = self.runner.batch_size if batch_size is None else batch_size
        workers = workers or os.cpu_count() or 1
        with one_blas_thread():
            if self.runner.per_core:
                yield from self._one_batch_per_core(_chunks(files, size), workers)
            else:
                yield from self._decode_ahead(_chunks(files, size), workers)

    def _decode(self, path: Path) -> Decoded:
        try:
            img, place = self.read(path)
            return self.transform.uint8(img), None, place
        except ImageLoadError as exc:
            return None, str(exc), None

    def _one_batch_per_core(self, chunks: Iterator[list[Path]], workers: int) -> Iterator[Prediction]:
        """Each of ``workers`` threads decodes a chunk and runs it on a single-threaded runner."""
        # the session (and ONNX Runtime's import) is built while the first batches decode
        with ThreadPoolExecutor(1) as starter:
            single: Future[Runner] = starter.submit(self.runner.single_threaded)

            def work(chunk: list[Path]) -> list[Prediction]:
                return self._finish(chunk, [self._decode(p) for p in chunk], single.result())

            yield from _run_windowed(chunks, work, workers)

    def _decode_ahead(self, chunks: Iterator[list[Path]], workers: int) -> Iterator[Prediction]:
        """Decoding threads prepare the next chunk while the runner (on every core) runs this one."""
        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending: tuple[list[Path], list[Future[Decoded]]] | None = None
            for chunk in chunks:
                future = (chunk, [pool.submit(self._decode, p) for p in chunk])
                if pending is not None:
                    yield from self._finish(pending[0], [f.result() for f in pending[1]], self.runner)
                pending = future
            if pending is not None:
                yield from self._finish(pending[0], [f.result() for f in pending[1]], self.runner)

    def _finish(self, chunk: list[Path], decoded: list[Decoded], runner: Runner) -> list[Prediction]:
        """The chunk's Predictions, in order: the decoded photos through the runner, an error row for the rest."""
        ok = [i for i, (x, _, _) in enumerate(decoded) if x is not None]
        preds: dict[int, Prediction] = {}
        if ok:
            batch = self.transform.normalise(np.stack([x for x, _, _ in decoded if x is not None]))
            answers = self.answer([str(chunk[i]) for i in ok], runner(batch), [decoded[i][2] for i in ok])
            preds = dict(zip(ok, answers))
        return [preds.get(i) or Prediction(str(chunk[i]), error=decoded[i][1]) for i in range(len(chunk))]


def _chunks(files: Iterable[Path], size: int) -> Iterator[list[Path]]:
    buf: list[Path] = []
    for f in files:
        buf.append(f)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def _run_windowed(chunks: Iterator[list[Path]], work: Callable[[list[Path]], list[Prediction]],
                  workers: int) -> Iterator[Prediction]:
    """``work`` on each chunk, ``workers`` at a time, results in input order; at most
    ``workers + 1`` chunks are in flight, whatever the number of files."""
    with ThreadPoolExecutor(workers) as pool:
        window: deque[Future[list[Prediction]]] = deque()
        for chunk in chunks:
            window.append(pool.submit(work, chunk))
            if len(window) > workers:
                yield from window.popleft().result()
        while window:
            yield from window.popleft().result()


def _tiles(img: Image.Image, grid: int) -> Iterator[Image.Image]:
    """``grid`` x ``grid`` overlapping tiles, each half the width and height of ``img``."""
    w, h = img.size
    tw, th = w / 2, h / 2
    for r in range(grid):
        for c in range(grid):
            left, top = c * (w - tw) / (grid - 1), r * (h - th) / (grid - 1)
            yield img.crop((round(left), round(top), round(left + tw), round(top + th)))


def _replace_place(tile: Prediction, whole: Prediction) -> Prediction:
    """A tile's answer with the whole photo's place and time."""
    import dataclasses

    return dataclasses.replace(tile, country=whole.country, latitude=whole.latitude, longitude=whole.longitude,
                               taken_at=whole.taken_at)
