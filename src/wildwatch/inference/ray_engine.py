"""Batch classification on Ray Data: the same rows as the local path, on a local Ray or a cluster.

Files are read by Ray (``read_binary_files``), decoded and classified in a pool of actors that
each hold one Predictor (``map_batches``), and the Predictions come back (as objects) in input
order, for the same writers as the local path (``inference.writers``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wildwatch.data.discover import expand_paths
from wildwatch.inference.prediction import Prediction


@dataclass
class RayResult:
    """Every file's Prediction in input order, and what made them (for the provenance sidecar)."""

    predictions: list[Prediction]
    model_file: Path
    architecture: str
    backends: list[str] = field(default_factory=list)  # the actors' backends


class _Classifier:
    """A Ray actor: one model per process, reused for every batch."""

    def __init__(self, model: str | None, backend: str, top_k: int, country: str | None,
                 species_list: list[str] | None = None):
        from wildwatch.inference.predictor import Predictor

        self.predictor = Predictor.from_file(model, backend=backend, top_k=top_k, country=country,
                                             species_list=None if species_list is None else frozenset(species_list))

    def __call__(self, batch: dict) -> dict:
        from wildwatch.data.loading import ImageLoadError

        rows: list[Prediction | None] = []
        images, places, names, slots = [], [], [], []
        for i, (path, data) in enumerate(zip(batch["path"], batch["bytes"])):
            try:
                img, place = self.predictor.read(bytes(data), str(path))
            except ImageLoadError as exc:
                rows.append(Prediction(str(path), error=str(exc)))
                continue
            images.append(img)
            places.append(place)
            names.append(str(path))
            slots.append(i)
            rows.append(None)
        for i, p in zip(slots, self.predictor.predict_images(images, names, places)):
            rows[i] = p
        return {"path": np.asarray([str(p) for p in batch["path"]], dtype=object),
                "prediction": np.asarray(rows, dtype=object),  # the Prediction objects themselves
                "backend": np.asarray([self.predictor.backend] * len(rows), dtype=object)}


def classify_with_ray(paths: Iterable, model: str | Path | None = None, backend: str = "auto", top_k: int = 3,
                      country: str | None = None, address: str | None = None, batch_size: int = 32,
                      actors: int | None = None, species_list: frozenset[str] | None = None) -> RayResult:
    """A Prediction for every file, in input order.

    ``address=None`` starts a local Ray for the call; otherwise joins that cluster (``auto`` or
    ``ray://host:10001``). Missing files get their error row without reaching Ray. ``species_list``:
    see ``Predictor.from_file``.
    """
    import ray

    files = [str(p) for p in expand_paths(paths)]
    present = [f for f in files if Path(f).is_file()]
    started = False
    if not ray.is_initialized():
        # a Ray started here listens on loopback only; a cluster address is used as given
        kwargs = {"address": address} if address else {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        ray.init(logging_level=logging.ERROR, log_to_driver=False, **kwargs)
        started = True
    try:
        settings = (None if model is None else str(model), backend, top_k, country,
                    None if species_list is None else sorted(species_list))
        found, backends = _run_actors(present, settings, batch_size, actors) if present else ({}, set())
        preds = [found.get(f) or Prediction(f, error=f"{f}: file not found") for f in files]
        model_file, architecture = _model_info(model)
        return RayResult(preds, model_file, architecture, sorted(backends))
    finally:
        if started:
            ray.shutdown()


def _run_actors(present: list[str], settings: tuple, batch_size: int,
                actors: int | None) -> tuple[dict[str, Prediction], set[str]]:
    """Predictions by the path as given, and the backends the actors ran (``settings``: the arguments
    of each actor's ``_Classifier``)."""
    import dataclasses

    import ray

    resolved = {str(Path(f).resolve()): f for f in present}
    ds = ray.data.read_binary_files(list(resolved), include_paths=True)
    n_actors = actors or max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
    out = ds.map_batches(_Classifier, fn_constructor_args=settings, batch_size=batch_size, concurrency=n_actors, batch_format="numpy")
    found: dict[str, Prediction] = {}
    backends: set[str] = set()
    for row in out.iter_rows():
        original = resolved.get(str(Path(row["path"]).resolve()), row["path"])
        found[original] = dataclasses.replace(row["prediction"], source=original)
        backends.add(str(row["backend"]))
    return found, backends


def _model_info(model: str | Path | None) -> tuple[Path, str]:
    """The model file (the bundled one for ``None``) and its architecture, read on the driver."""
    from wildwatch.models.bundle import load_bundle

    bundle = load_bundle(model)
    return bundle.model_file, bundle.meta()["architecture"]
