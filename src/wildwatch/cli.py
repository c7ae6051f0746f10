"""The ``wildwatch`` command line: each command parses, calls the library, prints."""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Tell which endangered species is in a photo, how threatened it is, and alert people.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect image folders.")
app.add_typer(data_app, name="data")


def friendly_errors(fn):
    """Print expected errors as one line (no traceback) and exit with status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pydantic import ValidationError

        from wildwatch.data.loading import ImageLoadError
        from wildwatch.engine.checkpoint import ModelFileError

        try:
            return fn(*args, **kwargs)
        except (FileNotFoundError, FileExistsError, ModelFileError, ImageLoadError, ValueError, KeyError,
                RuntimeError, ValidationError) as exc:
            msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2)

    return wrapper


@app.command()
@friendly_errors
def train(
    data: Path = typer.Option(..., help="ImageFolder tree: one sub-folder per class."),
    model: str = typer.Option("seed_m4_gap", help="Registered model name (see `wildwatch models`)."),
    out: Path = typer.Option(Path("runs/latest"), help="Run folder for config, split, history, curves, model."),
    epochs: Optional[int] = typer.Option(None, help="Default: the model's recipe."),
    image_size: Optional[int] = typer.Option(None, help="Input size in pixels. Default: the model's recipe."),
    batch_size: Optional[int] = typer.Option(None),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate."),
    step_size: Optional[int] = typer.Option(None, help="StepLR: epochs between learning-rate cuts."),
    gamma: Optional[float] = typer.Option(None, help="StepLR: factor of each cut."),
    ratios: Optional[str] = typer.Option(None, help="train,val,test ratios, e.g. 0.7,0.1,0.2"),
    pool: str = typer.Option("max", help="Pooling of the seed CNNs: max, avg, fuzzy, fuzzy1."),
    seed: int = typer.Option(0),
    workers: int = typer.Option(2, help="Data-loading worker processes."),
    device: str = typer.Option("auto", help="auto, cpu, cuda, mps."),
    config: Optional[Path] = typer.Option(None, help="YAML config; flags given here override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --out."),
):
    """Train a model; keep the best on validation accuracy. The test split is never touched."""
    import yaml

    from wildwatch.config import TrainConfig

    values = yaml.safe_load(config.read_text()) if config else {}
    flags = {"data": data, "model": model, "out": out, "epochs": epochs, "image_size": image_size,
             "batch_size": batch_size, "lr": lr, "step_size": step_size, "gamma": gamma, "pool": pool,
             "seed": seed, "workers": workers, "device": device,
             "ratios": tuple(float(x) for x in ratios.split(",")) if ratios else None}
    values.update({k: v for k, v in flags.items() if v is not None})
    cfg = TrainConfig.model_validate(values)
    from wildwatch.models import get_entry

    if get_entry(cfg.model).preprocess:  # pretrained backbones train on cached features
        from wildwatch.engine.transfer import fit_transfer

        result = fit_transfer(cfg, resume=resume)
    else:
        from wildwatch.engine.train import fit

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
):
    """Score a model on a split of its data: metrics, confusion matrix, calibration, errors."""
    from wildwatch.engine.evaluate import evaluate_model

    s = evaluate_model(model, data, out, split, views=views)
    typer.echo(f"{split} split: {s['n']} images, accuracy {s['accuracy']:.4f}, top-3 {s['top3_accuracy']:.4f}, "
               f"macro F1 {s['macro_f1']:.4f}, ECE {s['ece']:.4f}")
    if not s["data_fingerprint_matches"]:
        typer.secho("warning: the data differ from what the model was trained on", fg=typer.colors.YELLOW, err=True)
    for name, acc in s.get("views", {}).items():
        typer.echo(f"  view {name:<14}{acc:.4f}")
    typer.echo(f"reports in {out}")


@app.command()
@friendly_errors
def classify(
    paths: List[Path] = typer.Argument(..., help="Image files and folders (searched recursively)."),
    model: Optional[Path] = typer.Option(None, help="Run folder or model file. Default: the bundled model."),
    top_k: int = typer.Option(3, min=1, help="How many species to list per image."),
    output: Optional[Path] = typer.Option(None, help="Write rows to FILE.csv or FILE.jsonl."),
    batch_size: int = typer.Option(32, min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table on the terminal."),
):
    """Name the animal in each image, with its IUCN status. Broken files get an error; the rest go on."""
    from tqdm import tqdm

    from wildwatch.inference.predictor import Predictor
    from wildwatch.inference.writers import open_writer

    if output is not None and output.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"{output}: output must end in .csv or .jsonl")
    predictor = Predictor.from_file(model, top_k=top_k)
    n = n_err = 0
    with open_writer(output) as write:
        bar = tqdm(predictor.predict_paths(paths, batch_size=batch_size), unit="img", desc="classifying",
                   disable=quiet or not sys.stderr.isatty())
        for p in bar:
            write(p)
            n += 1
            n_err += p.error is not None
            if not quiet:
                if p.error:
                    typer.echo(f"{p.source}\tERROR\t{p.error}")
                else:
                    status = f"{p.iucn_status}{' threatened' if p.threatened else ''}"
                    label = f"unknown (closest: {p.top_k[0]['species']})" if p.unknown else p.species
                    typer.echo(f"{p.source}\t{label}\t{p.confidence:.3f}\t{status}")
    typer.echo(f"{n} files, {n - n_err} classified, {n_err} errors" + (f"; rows in {output}" if output else ""),
               err=True)


@app.command()
def models(pattern: str = typer.Argument("*", help="Shell-style pattern, e.g. 'seed_*'.")):
    """List the registered models."""
    from wildwatch.models import get_entry, list_models

    for name in list_models(pattern):
        typer.echo(f"{name:<16}{get_entry(name).description}")


@data_app.command("audit")
@friendly_errors
def data_audit(
    root: Path = typer.Argument(..., help="ImageFolder tree."),
    out: Optional[Path] = typer.Option(None, help="Write the full report as JSON here."),
):
    """Counts per class, unreadable files, exact and near duplicates, and size shortcuts."""
    from wildwatch.data.audit import audit_folder, format_audit

    report = audit_folder(root)
    typer.echo(format_audit(report))
    if out:
        out.write_text(json.dumps(report, indent=2))
