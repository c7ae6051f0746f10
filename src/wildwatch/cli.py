"""The ``wildwatch`` command line: each command parses, calls the library, prints."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import typer

from wildwatch.errors import UsageError, WildwatchError, require
from wildwatch.inference.writers import formats_help, names, writers

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tell which endangered species is in a photo, how threatened it is, and alert people.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect image folders.")
app.add_typer(data_app, name="data")
benchmark_app = typer.Typer(no_args_is_help=True, help="Measure a model under hard conditions.")
app.add_typer(benchmark_app, name="benchmark")

def _print_version(value: bool) -> None:
    if value:
        from wildwatch import __version__

        typer.echo(f"wildwatch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Tell which endangered species is in a photo, how threatened it is, and alert people."""


ROBUST_HELP = ("Name species with the bundled network fine-tuned on degraded photos (blur, noise, weather, "
               "night); the model still decides unknown. Twice the compute.")


def species_model(robust: bool) -> str | None:
    """What --robust means to Predictor.from_file: the bundled species network."""
    return "bundled" if robust else None


def friendly_errors(fn):
    """Print expected errors (``WildwatchError``, invalid options, a missing or unwritable file) as
    one line without a traceback, and exit with status 2. Anything else is a bug: it keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        try:
            return fn(*args, **kwargs)
        except (WildwatchError, ValidationError, FileNotFoundError, FileExistsError, PermissionError,
                IsADirectoryError, NotADirectoryError) as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)

    return wrapper


@app.command()
@friendly_errors
def train(
    data: Path = typer.Option(..., help="ImageFolder tree: one sub-folder per class."),
    model: str = typer.Option("seed_m4_gap", help="Registered model name (see `wildwatch models`)."),
    out: Path = typer.Option(Path("runs/latest"), help="Run folder for config, split, history, curves, model."),
    epochs: int | None = typer.Option(None, help="Default: the model's recipe."),
    image_size: int | None = typer.Option(None, help="Input size in pixels. Default: the model's recipe."),
    batch_size: int | None = typer.Option(None),
    lr: float | None = typer.Option(None, help="Adam learning rate."),
    step_size: int | None = typer.Option(None, help="StepLR: epochs between learning-rate cuts."),
    gamma: float | None = typer.Option(None, help="StepLR: factor of each cut."),
    ratios: str | None = typer.Option(None, help="train,val,test ratios, e.g. 0.7,0.1,0.2"),
    pool: str = typer.Option("max", help="Pooling of the seed CNNs: max, avg, fuzzy, fuzzy1."),
    seed: int = typer.Option(0),
    views: int = typer.Option(0, help="Pretrained backbones: augmented views cached per training photo (besides "
                              "the mirrored one)."),
    degrade_views: int | None = typer.Option(None, help="Pretrained backbones: views per training photo with "
                                                "random CCTV-style degradation (robustness). Default: the "
                                                "model's recipe (2 for effnet_lite0)."),
    ood: Path | None = typer.Option(None, help="Folder of photos of none of the classes: reports unknown AUROC."),
    field: Path | None = typer.Option(None, help="Pretrained backbones: folder of photos of the classes from "
                                         "other sources than --data (one subfolder per class); with --negatives, "
                                         "the decision (unknown threshold, calibrated confidence) is fitted on them."),
    negatives: Path | None = typer.Option(None, help="Pretrained backbones: folder of photos of none of the "
                                             "classes (one subfolder per label, not from ImageNet), for fitting "
                                             "the decision with --field."),
    negatives_half: str = typer.Option("all", help="all, dev or held_out: fit on one half of --field and "
                                       "--negatives (split by file-name hash per label) and keep the other for "
                                       "measuring."),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, mps."),
    config: Path | None = typer.Option(None, help="YAML config; flags given here override it."),
    clean_labels: bool = typer.Option(True, help="Pretrained backbones: leave out the training photos whose "
                                      "label the ImageNet classifier contradicts or confident learning flags "
                                      "(listed in label_cleaning.csv)."),
    int8_view: bool = typer.Option(True, help="Pretrained backbones: also train on the int8-quantised network's "
                                   "features, so the int8 copy keeps the model's answers."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
    distributed: bool = typer.Option(False, "--distributed", help="Require a torchrun launch (DDP; the "
                                     "batch size is per process)."),
    finetune: bool = typer.Option(False, "--finetune", help="Pretrained backbones: train the whole network on "
                                  "degraded photos (accuracy and robustness; meant for a GPU)."),
    time_limit: float | None = typer.Option(None, help="Fine-tuning: stop after this many minutes and finish "
                                               "with the best epoch so far."),
):
    """Train a model; keep the best on validation accuracy. The test split is never touched.

    Several processes or machines: torchrun --nproc_per_node=N -m wildwatch train ... (see README)."""
    require("torch", "train", "training")
    flags = {"data": data, "model": model, "out": out, "epochs": epochs, "image_size": image_size,
             "batch_size": batch_size, "lr": lr, "step_size": step_size, "gamma": gamma, "pool": pool,
             "seed": seed, "workers": workers, "device": device, "views": views, "ood_dir": ood,
             "field": field, "negatives": negatives, "negatives_half": negatives_half,
             "degrade_views": degrade_views, "clean_labels": clean_labels, "int8_view": int8_view,
             "finetune": finetune or None, "time_limit": time_limit,
             "ratios": tuple(float(x) for x in ratios.split(",")) if ratios else None}
    run_training(train_config(config, flags), resume, distributed)


def train_config(config: Path | None, flags: dict):
    """The YAML config (if any) with the flags given on the command line over it."""
    import yaml

    from wildwatch.config import TrainConfig

    values = yaml.safe_load(config.read_text()) if config else {}
    values.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig.model_validate(values)


def run_training(cfg, resume: bool, distributed: bool) -> None:
    from wildwatch.engine.distributed import launched_by_torchrun
    from wildwatch.engine.fit import fit
    from wildwatch.models import get_entry

    if distributed and not launched_by_torchrun():
        raise UsageError("--distributed needs a torchrun launch: torchrun --nproc_per_node=N -m wildwatch train ...")
    if launched_by_torchrun() and (cfg.finetune or get_entry(cfg.model).preprocess):
        raise UsageError(f"{cfg.model} trains in one process (cached features or fine-tuning); run it without torchrun")
    result = fit(cfg, resume=resume)
    typer.echo(f"best validation accuracy {result.best_val_acc:.4f} at epoch {result.best_epoch}; "
               f"run folder {result.out}")


@app.command()
@friendly_errors
def evaluate(
    model: Path = typer.Option(..., help="Run folder or .safetensors model file."),
    data: Path = typer.Option(..., help="The ImageFolder tree the model was trained on."),
    split: str = typer.Option("test", help="train, val or test."),
    out: Path = typer.Option(Path("runs/eval"), help="Folder for metrics.json, plots and pages."),
    views: bool = typer.Option(True, help="Also score partial views and the size-shortcut check."),
    exclude: Path | None = typer.Option(None, help="label_issues.csv from `data audit --model`: also report "
                                           "accuracy without the photos it flags."),
    robust: bool = typer.Option(False, "--robust", help=ROBUST_HELP),
):
    """Score a model on a split of its data: metrics, confusion matrix, calibration, errors."""
    require("torch", "train", "evaluate")
    require("matplotlib", "train", "evaluate's plots")
    from wildwatch.engine.evaluate import evaluate_model

    s = evaluate_model(model, data, out, split, views=views, exclude=exclude,
                       species_model=species_model(robust))
    typer.echo(f"{split} split: {s['n']} images, accuracy {s['accuracy']:.4f}, top-3 {s['top3_accuracy']:.4f}, "
               f"macro F1 {s['macro_f1']:.4f}, ECE {s['ece']:.4f}")
    if not s["data_fingerprint_matches"]:
        typer.secho("warning: the data differ from what the model was trained on", fg=typer.colors.YELLOW, err=True)
    if "without_flagged" in s:
        w = s["without_flagged"]
        typer.echo(f"  without {w['excluded']} photos flagged by the label audit: accuracy {w['accuracy']:.4f} on {w['n']}")
    for name, acc in s.get("views", {}).items():
        typer.echo(f"  view {name:<14}{acc:.4f}")
    typer.echo(f"reports in {out}")


@app.command()
@friendly_errors
def classify(
    paths: list[Path] | None = typer.Argument(None, help="Image files and folders (searched recursively); "
                                                 "with --detections, the folder the detector ran on."),
    model: Path | None = typer.Option(None, help="Run folder or model file. Default: the bundled model."),
    top_k: int = typer.Option(3, min=1, help="How many species to list per image."),
    output: Path | None = typer.Option(None, help="Write rows to FILE.csv or FILE.jsonl (or see --format)."),
    format: str | None = typer.Option(None, "--format", help=formats_help()),
    country: str | None = typer.Option(None, help="ISO country code of every photo (e.g. KE). Default: from "
                                          "each photo's EXIF GPS, when it has one."),
    no_exif: bool = typer.Option(False, "--no-exif", help="Do not read GPS and time from EXIF."),
    batch_size: int | None = typer.Option(None, min=1, help="Photos per model call. Default: the backend's "
                                             "fastest (4 for PyTorch on a CPU, 8 for ONNX Runtime, else 32)."),
    backend: str = typer.Option("auto", help="auto, torch, onnx (ONNX Runtime fp32) or onnx-int8."),
    robust: bool = typer.Option(False, "--robust", help=ROBUST_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table on the terminal (the progress bar and the "
                               "summary stay)."),
    explain: Path | None = typer.Option(None, help="Write a Grad-CAM overlay PNG per photo into this folder."),
    engine: str = typer.Option("local", help="local, or ray (Ray Data: a local Ray, or the cluster at --address)."),
    address: str | None = typer.Option(None, help="Ray cluster address (e.g. auto, ray://head:10001)."),
    resume: bool = typer.Option(False, "--resume", help="Skip files already in --output and append the rest."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --output if it already has rows."),
    detections: Path | None = typer.Option(None, help="A MegaDetector, AddaxAI or SpeciesNet results file: "
                                              "classify its animal boxes and write it back to --output (MegaDetector "
                                              "format) with the species."),
    image_root: str | None = typer.Option(None, help="With --detections: the folder its absolute image paths "
                                             "were under (on the detector's machine); they are read under PATHS."),
    detect: bool = typer.Option(False, "--detect", help="Camera-trap photos: the built-in animal detector finds "
                                "boxes, each box is classified at full detail, rows gain detections and counts."),
    detector_size: int = typer.Option(416, help="With --detect: the detector's input side in pixels (a multiple "
                                      "of 32; 640 finds more small animals, at 2.4x the cost)."),
    detection_threshold: float | None = typer.Option(None, min=0, max=1, help="The boxes that count: at least "
                                                        "this confident (default 0.2 with --detections, 0.3 with "
                                                        "--detect)."),
    event_gap: float = typer.Option(60.0, min=0, help="Photos of one camera less than this many seconds apart "
                                    "are one event (megadetector, camtrapdp, addaxai and coco outputs)."),
    location: str | None = typer.Option(None, help="Camtrap DP: the camera's position LAT,LON, for photos "
                                           "without EXIF GPS (a deployment needs its coordinates)."),
    species: str | None = typer.Option(None, help="Only these species by name (e.g. lion,jaguars: the species of "
                                       "your area); a photo named as another becomes unknown, its row saying "
                                       "which (off_list)."),
):
    """Name the animal in each image, with its IUCN status. Broken files get an error; the rest go on."""
    from wildwatch.inference.batch import ClassifyInterrupted, ClassifyOptions, classify_files, parse_location
    from wildwatch.species import parse_species_list

    opts = ClassifyOptions(paths=paths or [], detections=detections, detection_threshold=detection_threshold,
                           image_root=image_root, detect=detect, detector_size=detector_size, event_gap=event_gap,
                           location=parse_location(location), model=model, top_k=top_k, output=output, format=format, country=country,
                           use_exif=not no_exif, batch_size=batch_size, backend=backend, robust=robust,
                           explain=explain, engine=engine, address=address, resume=resume, overwrite=overwrite,
                           species_list=parse_species_list(species))
    try:  # -q leaves out the table, not the progress bar (on a terminal) nor the summary
        summary = classify_files(opts, None if quiet else _print_prediction, progress=True)
    except ClassifyInterrupted as stop:
        typer.secho(stop.line(), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(130) from None
    typer.echo(summary.line(output), err=True)
    if summary.errors:  # exit 1: some files could not be classified (their rows say why); 2 is a usage error
        raise typer.Exit(1)


def _detector():
    from wildwatch.inference.detect import Detector

    return Detector()


def _print_prediction(p) -> None:
    """One line per photo on the terminal: source, species (or what it shows instead), confidence, status."""
    from wildwatch.inference.prediction import describe_other, off_list_words

    if p.error:
        typer.echo(f"{p.source}\tERROR\t{p.error}")
        return
    where = f"\t{p.country}" if p.country else ""
    where += f"\t{p.note}" if p.note else ""
    where += "\t" + ", ".join(f"{n} {k}" for k, n in p.count.items()) if getattr(p, "count", None) else ""
    if p.off_list:
        typer.echo(f"{p.source}\tnot on the species list — {off_list_words(p.off_list)}{where}")
        return
    if p.unknown:  # no confidence: the 11-class probabilities say nothing about a photo of none of them
        typer.echo(f"{p.source}\tunknown — {describe_other(p.looks_like, p.looks_like_kind)}{where}")
        return
    if p.uncertain:
        typer.echo(f"{p.source}\tuncertain — {' or '.join(p.candidates)}?\t{p.confidence:.3f}{where}")
        return
    status = f"{p.iucn_status}{' threatened' if p.threatened else ''}"
    typer.echo(f"{p.source}\t{p.species}\t{p.confidence:.3f}\t{status}{where}")


@app.command("sort")
@friendly_errors
def sort_command(
    results: Path = typer.Argument(..., help="Results of classify: a MegaDetector file (--format megadetector or "
                                   "--detections; other tools' files too) or rows (.csv, .jsonl, .json)."),
    dest: Path = typer.Argument(..., help="The folder to sort into: one sub-folder per species, unsure, unknown, "
                                "person, vehicle, empty."),
    root: Path | None = typer.Option(None, help="The folder the results' paths are under (default: the one a "
                                        "MegaDetector file names, else the current folder); photos outside it are "
                                        "refused."),
    min_confidence: float = typer.Option(0.5, min=0, max=1, help="A species named less surely than this goes to "
                                         "unsure/."),
    species: str | None = typer.Option(None, help="Only these species by name (e.g. lion,jaguars); others go "
                                          "to not_on_list/."),
    link: bool = typer.Option(False, "--link", help="Hard-link instead of copying (same file system)."),
    blur_people: bool = typer.Option(False, "--blur-people", help="Blur people (their boxes, or the whole photo "
                                     "when a person was seen without a box) in the copies; blurred copies carry "
                                     "no EXIF."),
    detection_threshold: float = typer.Option(0.2, min=0, max=1, help="MegaDetector files: boxes at least this "
                                              "confident count."),
):
    """Copy (or hard-link) photos into folders by answer, optionally with people blurred."""
    from wildwatch.inference.sort import sort_photos
    from wildwatch.species import parse_species_list, species_table

    summary = sort_photos(results, dest, root, min_confidence, parse_species_list(species, species_table()), link,
                          blur_people, detection_threshold)
    typer.echo(summary.line(dest), err=True)
    if summary.errors:
        raise typer.Exit(1)


@app.command()
@friendly_errors
def serve(
    model: Path | None = typer.Option(None, help="Run folder or model file. Default: the bundled model."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0 to serve a local network)."),
    port: int = typer.Option(8000),
    api_key: str | None = typer.Option(None, envvar="WILDWATCH_API_KEY",
                                          help="Require this key (X-API-Key header) on every /v1 call. Prefer "
                                          "setting WILDWATCH_API_KEY: a flag is visible to every user in ps."),
    allowed_host: list[str] = typer.Option([], help="Answer requests for this Host name too (repeatable). Without "
                                           "an API key only loopback names and --host are answered (DNS rebinding)."),
    backend: str = typer.Option("auto", help="auto, torch, onnx or onnx-int8."),
    robust: bool = typer.Option(False, "--robust", help=ROBUST_HELP),
    cors_origin: list[str] = typer.Option([], help="Allow browser calls from this origin (repeatable). Closed by default."),
    batch_wait_ms: float = typer.Option(5.0, min=0, help="How long a request waits for others to share a model call."),
    events_db: Path | None = typer.Option(None, help="A monitor events database: enables /v1/events and the events tab."),
    country: str | None = typer.Option(None, help="ISO country code of every upload (default: EXIF GPS; a "
                                          "request can also pass ?country=CC)."),
    header_timeout: float = typer.Option(10.0, min=0.1, help="Close a connection whose request headers take "
                                         "longer than this many seconds (slow clients)."),
    body_timeout: float = typer.Option(60.0, min=0.1, help="Answer 408 to a request whose body takes longer "
                                       "than this many seconds."),
    detect: bool = typer.Option(False, "--detect", help="Camera-trap photos: the built-in animal detector finds "
                                "boxes in each upload, each box is classified (answers gain detections, count)."),
):
    """Serve the web page and the REST API (OpenAPI docs at /docs)."""
    require("fastapi", "serve", "serve")
    uvicorn = require("uvicorn", "serve", "serve")

    from wildwatch.inference.predictor import Predictor
    from wildwatch.service.app import create_app

    predictor = Predictor.from_file(model, backend=backend, species_model=species_model(robust))
    typer.echo(f"wildwatch on http://{host}:{port} ({predictor.backend} backend"
               f"{', API key required' if api_key else ''})", err=True)
    from wildwatch.service.guard import GuardedH11Protocol, Limits, serving_hosts

    limits = Limits(header_timeout_s=header_timeout, body_timeout_s=body_timeout)
    app_ = create_app(predictor, api_key=api_key, cors_origins=cors_origin or None, max_wait_ms=batch_wait_ms,
                      events_db=events_db, default_country=country, limits=limits,
                      allowed_hosts=serving_hosts(host, allowed_host, keyed=api_key is not None),
                      detector=_detector() if detect else None)
    protocol = type("Protocol", (GuardedH11Protocol,), {"header_timeout_s": header_timeout})
    uvicorn.run(app_, host=host, port=port, log_level="warning", http=protocol, timeout_keep_alive=5,
                limit_concurrency=256)


@app.command()
@friendly_errors
def events(
    db: Path = typer.Option(Path("events.db"), help="The events database."),
    since: str | None = typer.Option(None, help="Only sightings from this ISO date or time (UTC) on."),
    species: str | None = typer.Option(None, help="Only this class, e.g. rhino."),
    format: str = typer.Option("csv", "--format", help=f"{names(writers(sightings=True))}."),
    output: Path | None = typer.Option(None, help="File (csv, json) or folder (camtrapdp). Default: the terminal."),
    location: str | None = typer.Option(None, help="Camtrap DP: the cameras' position LAT,LON, for sightings "
                                           "without GPS."),
    cases: bool = typer.Option(False, "--cases", help="The media watch's cases instead (csv or json), with the "
                               "analysts' marks; --format labels: the marked posts as labelled JSON lines for "
                               "benchmarks/train_relevance.py --extra."),
):
    """List recorded sightings (or, with --cases, the media watch's cases)."""
    from wildwatch.store.events import EventStore

    store = EventStore.open_existing(db)
    if cases:
        from wildwatch.store.cases import CaseBook, cases_text

        text = cases_text(CaseBook(store).list(limit=1_000_000), format)
        if output is None:
            typer.echo(text.rstrip("\n"))
        else:
            output.write_text(text)
            typer.echo(f"cases written to {output}", err=True)
        return
    rows = store.list(since=since, species=species)
    _write_sightings(rows, store, format, output, location)


def _write_sightings(rows: list, store, fmt: str, output: Path | None, location: str | None) -> None:
    """Sightings through the output writers (``events --format``): text on the terminal or in
    ``output``, or a folder the writer fills."""
    from wildwatch.inference.batch import parse_location
    from wildwatch.inference.writers import columns_of
    from wildwatch.store.events import Sighting

    writer = next((w for w in writers(sightings=True) if w.name == fmt), None)
    if writer is None:
        raise UsageError(f"unknown format {fmt!r}: use {names(writers(sightings=True))}")
    text = writer.write_sightings(rows, columns_of(Sighting), store, output, parse_location(location))
    if text is None:
        typer.echo(f"{len(rows)} sightings written as {writer.title} to {output}", err=True)
    elif output is None:
        typer.echo(text.rstrip("\n"))
    else:
        output.write_text(text)
        typer.echo(f"{len(rows)} sightings written to {output}", err=True)


@app.command()
@friendly_errors
def monitor(
    sources: list[str] | None = typer.Argument(None, help="Video files, stream URLs (rtsp://, http://...), "
                                                  "watch-folders, feeds (feed:URL, or a URL or file ending in "
                                                  ".xml/.rss/.atom/.json)."),
    config: Path | None = typer.Option(None, help="monitor.yaml: sources, sampling, smoothing, alert policy, "
                                          "sinks (see the README)."),
    db: Path | None = typer.Option(None, help="Events database (default events.db); a restarted monitor goes "
                                      "on from it."),
    model: Path | None = typer.Option(None, help="Run folder or model file. Default: the bundled model."),
    country: str | None = typer.Option(None, help="ISO country code of the cameras: ranks species by range."),
    sample_every: float | None = typer.Option(None, help="Seconds of video between classified frames."),
    webhook: str | None = typer.Option(None, help="Also send alerts as JSON POSTs to this URL."),
    tiles: int | None = typer.Option(None, help=">= 2: frames without a confident answer get a second look "
                                        "at N x N overlapping tiles (small or distant animals)."),
    once: bool = typer.Option(False, "--once", help="Folders and feeds: process what is there now, then stop."),
    backend: str = typer.Option("auto", help="auto, onnx, onnx-int8, torch."),
    robust: bool = typer.Option(False, "--robust", help=ROBUST_HELP),
    status: bool = typer.Option(True, help="Show the live status line."),
    detect: bool = typer.Option(False, "--detect", help="The built-in animal detector finds boxes in each frame "
                                "or photo; each box is classified (small animals in large frames)."),
):
    """Watch videos, streams, folders and feeds; record sightings; send alerts."""
    import logging

    from wildwatch.inference.predictor import Predictor
    from wildwatch.monitor.alerts import WebhookSinkConfig
    from wildwatch.monitor.run import Monitor, MonitorConfig, frame_classifier

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    cfg = MonitorConfig.load(config, db=db, country=country, sample_every_s=sample_every, once=once or None,
                             tiles=tiles, detect=detect or None)
    if not (sources or cfg.sources):
        raise UsageError("no sources: give video files, stream URLs, folders or feeds (or sources: in --config)")
    if webhook:
        cfg.sinks.append(WebhookSinkConfig(url=webhook))
    cfg.check_country()
    predictor = Predictor.from_file(model, backend=backend, species_model=species_model(robust),
                                    country=cfg.country.upper() if cfg.country else None)
    mon = Monitor(cfg, frame_classifier(predictor, cfg), status=status)
    stats = mon.run(sources or None)
    typer.echo(json.dumps(stats))
    if stats["errors"]:  # exit 1: some sources or files failed; the line says what
        n = len(stats["errors"])
        typer.secho(f"monitor: {n} error{'s' * (n > 1)} ({stats['errors'][0]}{'; ...' if n > 1 else ''}); "
                    f"{stats['sightings']} sightings recorded", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(1)


@app.command()
@friendly_errors
def models(pattern: str = typer.Argument("*", help="Shell-style pattern, e.g. 'seed_*'.")):
    """List the registered models (the architectures that train builds)."""
    require("torch", "train", "the model registry")
    from wildwatch.models import get_entry, list_models

    for name in list_models(pattern):
        typer.echo(f"{name:<16}{get_entry(name).description}")


@data_app.command("audit")
@friendly_errors
def data_audit(
    root: Path = typer.Argument(..., help="ImageFolder tree."),
    out: Path | None = typer.Option(None, help="Write the full report as JSON here (a folder with --model)."),
    model: Path | None = typer.Option(None, help="Also list probable label errors, using this model's "
                                         "features (a run, a model file, or 'bundled')."),
    folds: int = typer.Option(5, min=2, help="Folds for the out-of-fold predictions of the label audit."),
):
    """Counts per class, unreadable files, exact and near duplicates, size shortcuts; with --model,
    probable label errors (out-of-fold predictions and confident learning) as an HTML page."""
    from wildwatch.data.audit import audit_folder, format_audit

    report = audit_folder(root)
    typer.echo(format_audit(report))
    if model is not None:
        require("torch", "train", "the label audit (--model)")
        from wildwatch.engine.label_audit import label_audit

        folder = out or Path("label_audit")
        la = label_audit(root, None if str(model) == "bundled" else model, folder, folds)
        typer.echo(f"label audit: {la['flagged']} probable label errors of {la['photos']} photos "
                   f"(out-of-fold accuracy {la['out_of_fold_accuracy']:.4f}); see {folder / 'label_issues.html'}")
        report["label_audit"] = la
        (folder / "audit.json").write_text(json.dumps(report, indent=2))
    elif out:
        out.write_text(json.dumps(report, indent=2))


@app.command()
@friendly_errors
def export(
    model: Path | None = typer.Option(None, help="Run folder or model file. Default: the bundled model."),
    format: str = typer.Option("onnx", help="Only onnx for now."),
    int8: bool = typer.Option(False, "--int8", help="Also make a static int8 model, calibrated on --data."),
    data: Path | None = typer.Option(None, help="The training folder: calibration and parity photos."),
    out: Path | None = typer.Option(None, help="Output file. Default: with --int8, beside the model, named "
                                       "in its bundle manifest (info.json) for `classify`; else the cache."),
    calibration_size: int = typer.Option(500, min=16, help="Training photos that calibrate the int8 ranges."),
    ood: Path | None = typer.Option(None, help="Photos of none of the species (e.g. ood_dev): also compare "
                                       "the unknown detector's AUROC with int8 and with fp32."),
):
    """Export to ONNX Runtime (one file, dynamic batch) with a parity check against PyTorch."""
    if format != "onnx":
        raise UsageError(f"unknown format {format!r}; only 'onnx' is supported")
    require("torch", "train", "export")
    require("onnx", "train", "export")
    from wildwatch.inference.export import export as do_export

    report = do_export(model, out, int8, data, calibration_size, ood)
    typer.echo(json.dumps(report, indent=2))


@benchmark_app.command("robustness")
@friendly_errors
def benchmark_robustness(
    data: Path = typer.Option(..., help="The ImageFolder tree the model was trained on."),
    model: str | None = typer.Option(None, help="Run folder or model file. Default: the bundled model."),
    split: str = typer.Option("test", help="train, val or test."),
    out: Path = typer.Option(Path("runs/robustness"), help="Folder for results, heatmap and report.html; "
                             "a stopped run resumes there."),
    pastes: Path | None = typer.Option(None, help="Folder with person/, landscape/ and other sub-folders "
                                          "(e.g. ood_dev): adds occlusion and small-animal conditions."),
    conditions: str | None = typer.Option(None, help="Comma-separated subset of conditions. Default: all."),
    limit_per_class: int | None = typer.Option(None, help="Score at most this many photos per class."),
    seed: int = typer.Option(0, help="Seed of the corruptions and of the subset."),
    workers: int = typer.Option(2, help="Processes that make the corrupted images."),
    backend: str = typer.Option("auto", help="auto, onnx, onnx-int8, torch."),
    robust: bool = typer.Option(False, "--robust", help=ROBUST_HELP),
    tiles: int = typer.Option(0, help=">= 2: a second look at N x N tiles where the whole image gave no "
                              "confident answer (as monitor --tiles)."),
):
    """Accuracy under the 15 ImageNet-C corruptions (severities 1-5), CCTV conditions and, with
    --pastes, occlusion by people and objects and animals small in the frame."""
    require("torch", "train", "the robustness benchmark")
    require("matplotlib", "train", "the robustness benchmark's heatmap")
    from wildwatch.robustness.benchmark import run_robustness

    names = [c.strip() for c in conditions.split(",") if c.strip()] if conditions else None
    s = run_robustness(model, data, out, split, limit_per_class, names, pastes, seed, workers, backend=backend,
                       species_model=species_model(robust),
                       tiles=tiles)
    typer.echo(f"clean accuracy {s['clean_accuracy']:.4f} on {s['n']} photos")
    for fam, d in s["families"].items():
        typer.echo(f"{fam}: mean {d['mean_accuracy']:.4f}, severities 1-3 {d['mean_severity_1_3']:.4f}, "
                   f"4-5 {d['mean_severity_4_5'] if d['mean_severity_4_5'] is not None else float('nan'):.4f}, "
                   f"relative drop {d['relative_drop']:.4f}")
    if "low_resolution_48px" in s:
        typer.echo(f"low resolution 48 px: {s['low_resolution_48px']:.4f}")
    if "animal_at_1_16_of_frame" in s:
        typer.echo(f"animal at 1/16 of the frame: {s['animal_at_1_16_of_frame']:.4f}")
    typer.echo(f"report: {out / 'report.html'}")
