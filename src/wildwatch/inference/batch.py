"""``wildwatch classify`` as a library call: typed options in, rows written, a summary out.

The command line parses its flags into ``ClassifyOptions``, calls ``classify_files`` and prints;
the option rules, the writers, Grad-CAM overlays and the Ray engine are chosen here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from wildwatch.errors import DataError, UnknownNameError, UsageError, require
from wildwatch.inference.prediction import Prediction
from wildwatch.inference.writers import (
    Batch,
    Writer,
    file_names,
    format_of,
    get_writer,
    suffix_format,
    write_atomic,
    writers,
)

DETECTIONS_FORMAT = "megadetector"  # --detections writes its results file back in this format


class ClassifyOptions(BaseModel):
    """Everything ``wildwatch classify`` can be asked; ``check`` says which combinations cannot work."""

    model_config = ConfigDict(extra="forbid")

    paths: list[Path] = Field(default_factory=list)
    model: Path | None = None
    detections: Path | None = None  # a MegaDetector, AddaxAI or SpeciesNet file: classify its animal boxes
    image_root: str | None = None  # --detections: the folder its absolute paths were under
    detect: bool = False  # the built-in detector proposes boxes
    detector_size: int = Field(416, ge=128, le=1280)
    detection_threshold: float | None = Field(None, ge=0, le=1)  # default: 0.2 (--detections), 0.3 (--detect)
    event_gap: float = Field(60.0, ge=0, le=86_400)  # seconds between photos of one event
    top_k: int = Field(3, ge=1)
    output: Path | None = None
    format: str | None = None
    country: str | None = None
    use_exif: bool = True
    batch_size: int | None = Field(None, ge=1)
    backend: str = "auto"
    robust: bool = False
    explain: Path | None = None
    engine: str = "local"
    address: str | None = None
    resume: bool = False
    overwrite: bool = False  # replace an output that has rows (without it: refused, unless --resume)
    location: tuple[float, float] | None = None  # Camtrap DP: the camera's latitude, longitude
    species_list: frozenset[str] | None = None  # --species: the species named; others become unknown

    @property
    def fmt(self) -> str | None:
        """The output format: --format, else the output file's suffix (.json: one JSON document,
        .jsonl: JSON lines, anything else: CSV)."""
        return format_of(self.output, self.format)

    @property
    def writer(self) -> Writer | None:
        """The writer of ``fmt`` (None without an output format)."""
        fmt = self.fmt
        if fmt is None:
            return None
        try:
            return get_writer(fmt)
        except UnknownNameError as exc:
            raise UsageError(str(exc)) from None

    def check(self) -> None:
        if self.detections is not None:
            self._check_detections()
            return
        if not self.paths:
            raise UsageError("give the photos to classify: files or folders (or --detections md.json)")
        self._check_output(self.writer)
        self._check_overwrite(self.writer)
        if self.country is not None and (len(self.country) != 2 or not self.country.isalpha()):
            raise UsageError(f"--country {self.country!r}: give an ISO 3166-1 alpha-2 code such as KE, IN or BR")
        self._check_engine(self.writer)
        if self.explain is not None:
            require("torch", "train", "--explain (Grad-CAM)")
        if self.location is not None:
            check_location(self.location)
        if self.detect and (self.engine != "local" or self.explain is not None):
            raise UsageError("--detect runs with the local engine, without --explain")
        if self.detector_size % 32:
            raise UsageError(f"--detector-size {self.detector_size}: use a multiple of 32 (e.g. 416 or 640)")
        if self.image_root is not None:
            raise UsageError("--image-root goes with --detections: it re-roots the results file's absolute paths")

    def destination(self) -> tuple[Path, Writer]:
        """The output and its writer, for the parts of a run that write one (``check`` refuses a run
        that needs them and lacks one)."""
        writer = self.writer
        if self.output is None or writer is None:
            raise UsageError("this run writes its results: give --output")
        return self.output, writer

    def _check_output(self, w: Writer | None) -> None:
        """The writer's own rules: a suffix that names another row format, an output it needs, --resume."""
        output = self.output
        implied = suffix_format(output) if output is not None else None
        if w is not None and output is not None and self.format == w.name and w.per_row and implied not in (None, w.name):
            raise UsageError(f"--format {w.name} but --output {output.name} is a {implied} file name; "
                             "make them agree")
        if w is not None and not w.per_row and output is None:
            raise UsageError(f"--format {w.name} needs --output ({w.output})")
        if self.resume and (output is None or w is None or not w.resumable):
            raise UsageError(f"--resume needs --output {file_names([x for x in writers() if x.resumable])}: it "
                             "skips the files already written there")

    def _check_engine(self, w: Writer | None) -> None:
        if self.engine not in ("local", "ray"):
            raise UsageError(f"unknown engine {self.engine!r}: use local or ray")
        if self.engine == "ray" and self.robust:
            raise UsageError("--robust runs with the local engine only; leave out --engine ray")
        if w is not None and self.engine in w.engines:
            return
        if self.engine == "ray":
            raise UsageError(f"--engine ray writes --output {file_names(writers(engine='ray', per_row=True))}")
        if w is not None:
            raise UsageError(f"{w.title} output comes with --engine {' or '.join(w.engines)}; "
                             f"locally use {file_names(writers(engine='local', per_row=True))}")

    def _check_overwrite(self, w: Writer | None) -> None:
        """An output that has rows is never replaced silently (AddaxAI's: either of its two tables)."""
        if self.output is None or self.resume or self.overwrite or w is None or not w.has_content(self.output):
            return
        resumable = w.resumable and self.detections is None
        raise UsageError(f"{self.output} already exists and is not empty; add "
                         f"{'--resume to go on after the rows in it, or ' if resumable else ''}--overwrite to replace it")

    def _check_detections(self) -> None:
        if self.output is None:
            raise UsageError("--detections needs --output: the MegaDetector file to write with the classifications")
        self._check_overwrite(get_writer(DETECTIONS_FORMAT))
        if self.format not in (None, DETECTIONS_FORMAT):
            raise UsageError("--detections writes MegaDetector batch output: leave out --format or use megadetector")
        if len(self.paths) > 1:
            raise UsageError("with --detections, give at most one folder: the one the detector ran on")
        if self.engine != "local" or self.resume or self.explain is not None or self.detect:
            raise UsageError("--detections runs with the local engine, without --resume, --explain or --detect")


def check_location(location: tuple[float, float]) -> None:
    lat, lon = location
    if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat, lon) == (0, 0):
        raise UsageError(f"--location {lat},{lon}: give the camera's latitude,longitude in degrees (e.g. -1.29,36.82)")


def parse_location(text: str | None) -> tuple[float, float] | None:
    """``"LAT,LON"`` → (lat, lon), checked."""
    if text is None:
        return None
    try:
        lat, lon = (float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--location {text!r}: give latitude,longitude in degrees, e.g. -1.29,36.82") from None
    check_location((lat, lon))
    return lat, lon


class ClassifyInterrupted(Exception):
    """Ctrl-C during ``classify_files``: ``rows`` were written (and kept) before it."""

    def __init__(self, rows: int, output: Path | None, resumable: bool):
        super().__init__(rows)
        self.rows, self.output, self.resumable = rows, output, resumable

    def line(self) -> str:
        if self.output is None:
            return f"interrupted after {self.rows} files"
        again = "; rerun with --resume to go on" if self.resumable else "; run again to write it"
        return f"interrupted: {self.rows} rows written to {self.output}{again}"


@dataclass
class ClassifySummary:
    files: int
    errors: int
    already_done: int
    how: str  # "onnx-int8 backend", "ray"

    def line(self, output: Path | None) -> str:
        skipped = f", {self.already_done} already done" if self.already_done else ""
        return (f"{self.files} files, {self.files - self.errors} classified, {self.errors} errors{skipped} "
                f"({self.how})" + (f"; rows in {output}" if output else ""))


def classify_files(opts: ClassifyOptions, on_prediction: Callable[[Prediction], None] | None = None,
                   progress: bool = False) -> ClassifySummary:
    """Classify every file under ``opts.paths`` and write the rows; ``on_prediction`` sees each one."""
    opts.check()
    if opts.detections is not None:
        return _classify_detections(opts, opts.detections, progress)
    if opts.engine == "ray":
        return _classify_with_ray(opts)
    from tqdm import tqdm

    writer, output = opts.writer, opts.output
    predictor = _predictor(opts)
    pipe = _detect_pipeline(opts, predictor) if opts.detect else None
    per_row = writer is None or writer.per_row
    collected: list[Prediction] = []
    todo = _Todo(opts, writer)
    # the files are found once, by _Todo (which leaves out those --resume skips)
    stream = pipe.predict_files(todo) if pipe else predictor.predict_files(todo, batch_size=opts.batch_size)
    if output is not None and writer is not None and writer.per_row:
        _write_provenance(opts, writer.name, predictor)
    n = n_err = 0
    try:
        with _row_writer(opts, writer) as write:
            for p in tqdm(stream, unit="img", desc="classifying", disable=not (progress and sys.stderr.isatty())):
                write(p)
                n += 1  # counted at once: the row is in the file
                n_err += p.error is not None
                if not per_row:
                    collected.append(p)
                if opts.explain is not None and p.error is None:
                    _write_overlay(predictor, p, opts.explain, n - 1)
                if on_prediction is not None:
                    on_prediction(p)
        if collected:  # the batch formats are written, atomically, once every photo is in
            write_batch(opts, collected, predictor, pipe)
    except KeyboardInterrupt:  # the rows written so far stay; --resume goes on after them
        raise ClassifyInterrupted(n if per_row else 0, output, per_row) from None
    if n == 0 and todo.skipped == 0:
        from wildwatch.data.loading import FORMATS_READ

        raise DataError(f"no photos found in {', '.join(map(str, opts.paths))}: wildwatch reads {FORMATS_READ} "
                        "files (folders are searched recursively)")
    how = f"{predictor.backend} backend" + (f", built-in detector at {pipe.detector.size} px" if pipe else "")
    return ClassifySummary(n, n_err, todo.skipped, how)


class _Todo:
    """The photos to classify: every file under the paths, less (``--resume``) those the output has.
    Matched by resolved path: "photos" and "/abs/photos" are one folder."""

    def __init__(self, opts: ClassifyOptions, writer: Writer | None):
        self.paths = opts.paths
        self.done = {_resolved(s) for s in writer.done(opts.destination()[0])} if opts.resume and writer else set()
        self.skipped = 0

    def __iter__(self):
        from wildwatch.data.discover import expand_paths

        for p in expand_paths(self.paths):
            if self.done and _resolved(p) in self.done:
                self.skipped += 1
                continue
            yield p


def _row_writer(opts: ClassifyOptions, writer: Writer | None):
    """Where each row goes: the per-row writer of the output, or nowhere (no output, or a format
    written from the whole batch at the end)."""
    from wildwatch.inference.writers import open_writer

    per_row = writer is not None and writer.per_row and opts.output is not None
    return open_writer(opts.output if per_row else None, append=opts.resume, fmt=opts.fmt,
                       columns=_row_columns(opts.detect))


def _write_provenance(opts: ClassifyOptions, fmt: str, predictor, engine: str = "local") -> None:
    from wildwatch.inference.writers.provenance import run_record, write_provenance

    options = opts.model_dump(mode="json", exclude={"output", "resume", "overwrite"})
    run = run_record(predictor.model_path, predictor.meta["architecture"], predictor.backend, options,
                     predictor.runner.species_digest, engine)
    write_provenance(opts.destination()[0], fmt, run, append=opts.resume)


def _predictor(opts: ClassifyOptions):
    from wildwatch.inference.predictor import Predictor

    return Predictor.from_file(opts.model, top_k=opts.top_k, backend=opts.backend,
                               species_model="bundled" if opts.robust else None,
                               country=opts.country.upper() if opts.country else None, use_exif=opts.use_exif,
                               species_list=opts.species_list)


def _detect_pipeline(opts: ClassifyOptions, predictor):
    from wildwatch.inference.camtrap import DetectPipeline
    from wildwatch.inference.detect import DEFAULT_THRESHOLD, Detector

    threshold = DEFAULT_THRESHOLD if opts.detection_threshold is None else opts.detection_threshold
    return DetectPipeline(predictor, Detector(size=opts.detector_size, threshold=threshold))


def _row_columns(detect: bool) -> list[str]:
    """The table columns: the fields of the Prediction class the run yields (``--detect`` adds its own)."""
    from wildwatch.inference.writers import columns_of

    if not detect:
        return columns_of(Prediction)
    from wildwatch.inference.camtrap import DetectedPrediction

    return columns_of(DetectedPrediction)


def write_batch(opts: ClassifyOptions, preds: list, predictor, pipe=None) -> None:
    """The formats that describe the whole batch (with the photos grouped into sequences), through
    the output format's writer."""
    detector = None if pipe is None else {
        "detector": "wildwatch built-in (DrivenData's YOLOX-tiny MegadetectorLite, zamba 2.7.2, MIT)",
        "detector_input_px": pipe.detector.size, "detection_threshold": pipe.detector.threshold}
    output, writer = opts.destination()
    output.parent.mkdir(parents=True, exist_ok=True)
    batch = Batch(preds, predictor.classes, predictor.meta["architecture"], list(opts.paths), opts.event_gap,
                  opts.location, detector)
    writer.write_batch(batch, output)


def _classify_detections(opts: ClassifyOptions, detections: Path, progress: bool) -> ClassifySummary:
    """Classify the animal boxes of a MegaDetector, AddaxAI or SpeciesNet file; write it back (as
    MegaDetector batch output) with the answers."""
    from tqdm import tqdm

    from wildwatch.inference.megadetector import DEFAULT_THRESHOLD, classify_detections
    from wildwatch.inference.readers import read_results

    doc = read_results(detections)
    root = opts.paths[0] if opts.paths else detections.parent
    if not Path(root).is_dir():
        raise UsageError(f"{root}: not a folder (give the folder the detector ran on, which its file names are "
                         "relative to)")
    predictor = _predictor(opts)
    threshold = DEFAULT_THRESHOLD if opts.detection_threshold is None else opts.detection_threshold
    with tqdm(total=len(doc["images"]), unit="img", desc="classifying boxes",
              disable=not (progress and sys.stderr.isatty())) as bar:
        doc, summary = classify_detections(doc, Path(root), predictor, threshold, opts.batch_size or 32,
                                           predictor.meta["architecture"], bar.update, opts.image_root)
    write_atomic(opts.destination()[0], json.dumps(doc, indent=1))
    return ClassifySummary(summary.images, summary.images_failed, 0,
                           f"{predictor.backend} backend, {summary.boxes_classified} animal boxes")


def _resolved(path) -> str:
    return str(Path(path).resolve())


def _write_overlay(predictor, p: Prediction, folder: Path, n: int) -> None:
    from wildwatch.data.loading import load_image
    from wildwatch.inference.explain import explain_image, explained_class

    folder.mkdir(parents=True, exist_ok=True)
    explain_image(predictor, load_image(p.source), explained_class(predictor, p)).save(
        folder / f"{n:06d}_{Path(p.source).stem}.png")


def _classify_with_ray(opts: ClassifyOptions) -> ClassifySummary:
    """The rows from Ray, written by the same writer as the local path's, with its sidecar."""
    from wildwatch.inference.ray_engine import classify_with_ray
    from wildwatch.inference.writers import write_rows
    from wildwatch.inference.writers.provenance import run_record, write_provenance

    result = classify_with_ray(opts.paths, opts.model, opts.backend, opts.top_k,
                               opts.country.upper() if opts.country else None, opts.address, opts.batch_size or 32,
                               species_list=opts.species_list)
    output, writer = opts.destination()
    write_rows(result.predictions, output, writer.name, _row_columns(False))
    options = opts.model_dump(mode="json", exclude={"output", "resume", "overwrite"})
    write_provenance(output, writer.name, run_record(result.model_file, result.architecture,
                                                       ", ".join(result.backends) or opts.backend, options,
                                                       engine="ray"))
    preds = result.predictions
    return ClassifySummary(len(preds), sum(1 for p in preds if p.error), 0, "ray")
